"""DCAP: the dCache access protocol's door (control lines) and mover (data channel)."""

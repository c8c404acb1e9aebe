#!/bin/sh
# The README's examples, against the deployment `make run` starts: run this from the
# directory `make run` was started in, while it runs.  It stops at the first failure.
set -eu
PATH=$PWD/${VENV:-.venv}/bin:$PATH     # VENV=.venv-pypy after make run PYTHON=pypy3
door=${DCAP_DOOR:-127.0.0.1}          # host[:port] of the local door
copy=${TMPDIR:-/tmp}/hosts.copy      # local copies go to a file name, never a directory
set -x

# distcache: dc_test through the local dc_client, which shares one connection to dc_server
dc_test -connect UNIX:var/scache

# DCAP: write a file, overwrite it (the local door allows that), read it back, compare
dccp /etc/hosts "dcap://$door/pnfs/local/tmp/hosts"
dccp /etc/hosts "dcap://$door/pnfs/local/tmp/hosts"
dccp "dcap://$door/pnfs/local/tmp/hosts" "$copy"
cmp /etc/hosts "$copy"

# libpdcap: an unchanged program reads dcap:// URLs
LD_PRELOAD=libpdcap.so.1 head -c 100 "dcap://$door/pnfs/local/tmp/hosts" >/dev/null

# dcap-admin: import a local directory next to the running door, list it, read it back
run1=$(mktemp -d)
printf 'event data\n' > "$run1/file.dat"
dcap-admin --root var/dcap import "$run1" /pnfs/local/tmp/run1 --replace
dcap-admin --root var/dcap ls /pnfs/local/tmp/run1
dccp "dcap://$door/pnfs/local/tmp/run1/file.dat" "$copy"
cmp "$run1/file.dat" "$copy"
rm -r "$run1"

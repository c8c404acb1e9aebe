/*
 * Load generator for bench/per_op_bench.py: cheaper per request than the servers it drives,
 * so that the servers, not the load, set the figures.
 *
 * Forks P worker processes against one unix socket.  Each worker runs a poll() loop over
 * its own connections for the given number of seconds:
 *
 *   conn mode  every one of C slots repeats: connect, send the request, read the whole
 *              reply, compare it byte for byte with the expected one, close (C connections
 *              under way at once per worker);
 *   pipe mode  C persistent connections, each keeping D requests in flight: every
 *              complete reply is checked and, until the deadline, replaced by a new
 *              request; after the deadline the outstanding replies are drained and checked.
 *
 * The latency of an operation runs from its connect (conn mode) or from the moment its
 * request was queued for sending (pipe mode) to the last byte of its reply.  Each worker
 * writes its latencies in nanoseconds (native uint64) to OUT.<worker>; when all workers
 * succeeded the parent joins them into OUT and prints "ops <count>".  A wrong, short or
 * surplus reply, a closed connection or 30 s without progress makes the worker, and so
 * the run, exit non-zero with a message on stderr.
 *
 *   perop_load -p PATH -m conn|pipe -s SECONDS -P PROCESSES -c CONNECTIONS -d DEPTH
 *              -q REQUEST_HEX -r REPLY_HEX -o OUT
 *
 * Plain POSIX and libc only.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STALL_NS (30ull * 1000000000ull)
#define RBUF_SIZE 65536

static int worker_index = -1;

static void die(const char *fmt, ...)
{
    va_list ap;
    if (worker_index >= 0)
        fprintf(stderr, "perop_load worker %d: ", worker_index);
    else
        fprintf(stderr, "perop_load: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

/* Latencies of one worker, in nanoseconds. */
static uint64_t *lat;
static size_t lat_n, lat_cap;

static void record(uint64_t ns)
{
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat)
            die("out of memory for latencies");
    }
    lat[lat_n++] = ns;
}

static unsigned char *from_hex(const char *hex, size_t *len)
{
    size_t n = strlen(hex), i;
    unsigned char *out;
    if (n == 0 || n % 2)
        die("hex argument of odd or zero length");
    out = xmalloc(n / 2);
    for (i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            die("bad hex digit at %zu", 2 * i);
        out[i] = (unsigned char)v;
    }
    *len = n / 2;
    return out;
}

static struct sockaddr_un addr;
static const unsigned char *request, *reply;
static size_t request_len, reply_len;

static int open_socket(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl: %s", strerror(errno));
    return fd;
}

/* Compare the bytes of a reply stream with the expected reply; *offset is how far into the
 * current reply the stream is.  Returns how many replies the bytes completed. */
static size_t check_reply_bytes(const unsigned char *buf, size_t n, size_t *offset)
{
    size_t done = 0;
    while (n) {
        size_t take = reply_len - *offset;
        if (take > n)
            take = n;
        if (memcmp(buf, reply + *offset, take) != 0) {
            size_t i = 0;
            while (buf[i] == reply[*offset + i])
                i++;
            die("wrong reply: byte %zu of the reply is 0x%02x, expected 0x%02x",
                *offset + i, buf[i], reply[*offset + i]);
        }
        buf += take;
        n -= take;
        *offset += take;
        if (*offset == reply_len) {
            *offset = 0;
            done++;
        }
    }
    return done;
}

/* conn mode ---------------------------------------------------------------------------- */

enum { IDLE, CONNECTING, SENDING, READING };

struct slot {
    int fd, state;
    uint64_t start;
    size_t sent, got;
};

static int try_connect(struct slot *s)
{
    s->fd = open_socket();
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        s->state = SENDING;
        return 1;
    }
    if (errno == EINPROGRESS) {
        s->state = CONNECTING;
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {  /* listen backlog full: retry */
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    die("connect %s: %s", addr.sun_path, strerror(errno));
    return 0;
}

static void send_request(struct slot *s)
{
    while (s->sent < request_len) {
        ssize_t w = write(s->fd, request + s->sent, request_len - s->sent);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die("write: %s", strerror(errno));
        }
        s->sent += (size_t)w;
    }
    s->state = READING;
}

static void run_conn(double seconds, int concurrency)
{
    struct slot *slots = xmalloc(concurrency * sizeof *slots);
    struct pollfd *pfd = xmalloc(concurrency * sizeof *pfd);
    unsigned char *rbuf = xmalloc(RBUF_SIZE);
    uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9), progress = now_ns();
    int i, active;

    for (i = 0; i < concurrency; i++) {
        slots[i].fd = -1;
        slots[i].state = IDLE;
        slots[i].start = 0;
    }
    for (;;) {
        uint64_t now = now_ns();
        int waiting = 0, n = 0, rc;
        active = 0;
        for (i = 0; i < concurrency; i++) {
            struct slot *s = &slots[i];
            if (s->state == IDLE && s->fd < 0 && now < deadline) {
                if (!s->start)
                    s->start = now_ns();
                s->sent = s->got = 0;
                if (!try_connect(s))
                    waiting = 1;
                else if (s->state == SENDING)
                    send_request(s);
            }
            if (s->state != IDLE) {
                active++;
                pfd[n].fd = s->fd;
                pfd[n].events = s->state == READING ? POLLIN : POLLOUT;
                pfd[n].revents = 0;
                n++;
            } else if (s->start && now < deadline) {
                waiting = 1;  /* an operation whose connect must be retried */
            } else {
                s->start = 0;  /* never connected before the deadline: not an operation */
            }
        }
        if (!active && !waiting)
            break;
        if (now - progress > STALL_NS)
            die("no reply for 30 s (%d connections under way)", active);
        rc = poll(pfd, n, waiting ? 1 : 1000);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        for (i = 0, n = 0; i < concurrency; i++) {
            struct slot *s = &slots[i];
            short ev;
            if (s->state == IDLE)
                continue;
            ev = pfd[n++].revents;
            if (!ev)
                continue;
            if (s->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err)
                    die("connect %s: %s", addr.sun_path, strerror(err));
                s->state = SENDING;
            }
            if (s->state == SENDING) {
                send_request(s);
                continue;
            }
            for (;;) {  /* READING */
                ssize_t r = read(s->fd, rbuf, RBUF_SIZE);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                    die("read: %s", strerror(errno));
                }
                if (r == 0)
                    die("short reply: the server closed the connection after %zu of %zu bytes",
                        s->got, reply_len);
                if (s->got + (size_t)r > reply_len)
                    die("surplus reply bytes: %zu after a %zu-byte reply",
                        s->got + (size_t)r - reply_len, reply_len);
                {
                    size_t offset = s->got;
                    check_reply_bytes(rbuf, (size_t)r, &offset);
                }
                s->got += (size_t)r;
                if (s->got == reply_len) {
                    uint64_t end = now_ns();
                    record(end - s->start);
                    progress = end;
                    close(s->fd);
                    s->fd = -1;
                    s->state = IDLE;
                    s->start = 0;
                    break;
                }
            }
        }
    }
    free(slots);
    free(pfd);
    free(rbuf);
}

/* pipe mode ---------------------------------------------------------------------------- */

struct conn {
    int fd;
    uint64_t *queued;        /* ring of the queue times of the requests in flight */
    size_t head, inflight;   /* oldest entry, entries in use */
    size_t tx_left, tx_pos;  /* request bytes still to write, position in the request stream */
    size_t rx_off;           /* bytes into the current reply */
};

static void queue_requests(struct conn *c, size_t count, size_t depth, uint64_t when)
{
    size_t k;
    for (k = 0; k < count; k++) {
        c->queued[(c->head + c->inflight) % depth] = when;
        c->inflight++;
    }
    c->tx_left += count * request_len;
}

static void flush_requests(struct conn *c, const unsigned char *stream, size_t stream_len)
{
    while (c->tx_left) {
        size_t at = c->tx_pos % request_len, len = stream_len - at;
        ssize_t w;
        if (len > c->tx_left)
            len = c->tx_left;
        w = write(c->fd, stream + at, len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die("write: %s", strerror(errno));
        }
        c->tx_left -= (size_t)w;
        c->tx_pos += (size_t)w;
    }
}

static void run_pipe(double seconds, int connections, size_t depth)
{
    struct conn *conns = xmalloc(connections * sizeof *conns);
    struct pollfd *pfd = xmalloc(connections * sizeof *pfd);
    unsigned char *rbuf = xmalloc(RBUF_SIZE);
    /* the request repeated: any window of the request stream is one contiguous slice */
    size_t stream_len = (depth + 1) * request_len, k;
    unsigned char *stream = xmalloc(stream_len);
    uint64_t deadline, progress;
    int i;

    for (k = 0; k <= depth; k++)
        memcpy(stream + k * request_len, request, request_len);
    for (i = 0; i < connections; i++) {
        struct conn *c = &conns[i];
        memset(c, 0, sizeof *c);
        c->queued = xmalloc(depth * sizeof *c->queued);
        c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c->fd < 0)
            die("socket: %s", strerror(errno));
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            die("connect %s: %s", addr.sun_path, strerror(errno));
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
            die("fcntl: %s", strerror(errno));
    }
    deadline = now_ns() + (uint64_t)(seconds * 1e9);
    progress = now_ns();
    for (i = 0; i < connections; i++) {
        queue_requests(&conns[i], depth, depth, now_ns());
        flush_requests(&conns[i], stream, stream_len);
    }
    for (;;) {
        int rc, outstanding = 0;
        for (i = 0; i < connections; i++) {
            struct conn *c = &conns[i];
            outstanding += (int)c->inflight;
            pfd[i].fd = c->fd;
            pfd[i].events = POLLIN | (c->tx_left ? POLLOUT : 0);
            pfd[i].revents = 0;
        }
        if (!outstanding)
            break;
        if (now_ns() - progress > STALL_NS)
            die("no reply for 30 s (%d requests in flight)", outstanding);
        rc = poll(pfd, connections, 1000);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        for (i = 0; i < connections; i++) {
            struct conn *c = &conns[i];
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = read(c->fd, rbuf, RBUF_SIZE);
                if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                    die("read: %s", strerror(errno));
                if (r == 0)
                    die("short reply: the server closed the connection with %zu replies "
                        "outstanding (%zu bytes into one)", c->inflight, c->rx_off);
                if (r > 0) {
                    uint64_t now;
                    size_t done;
                    /* bytes beyond the replies owed are a surplus, never a reply */
                    if ((size_t)r > c->inflight * reply_len - c->rx_off)
                        die("surplus reply bytes: %zu beyond the %zu replies owed",
                            (size_t)r - (c->inflight * reply_len - c->rx_off), c->inflight);
                    done = check_reply_bytes(rbuf, (size_t)r, &c->rx_off);
                    now = now_ns();
                    for (k = 0; k < done; k++) {
                        record(now - c->queued[c->head]);
                        c->head = (c->head + 1) % depth;
                        c->inflight--;
                    }
                    if (done) {
                        progress = now;
                        if (now < deadline)
                            queue_requests(c, done, depth, now);
                    }
                }
            }
            if (c->tx_left)
                flush_requests(c, stream, stream_len);
        }
    }
    for (i = 0; i < connections; i++) {
        close(conns[i].fd);
        free(conns[i].queued);
    }
    free(conns);
    free(pfd);
    free(rbuf);
    free(stream);
}

/* main --------------------------------------------------------------------------------- */

static void write_all(int fd, const void *buf, size_t len, const char *what)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("writing %s: %s", what, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
}

static void usage(void)
{
    die("usage: perop_load -p PATH -m conn|pipe -s SECONDS -P PROCESSES -c CONNECTIONS "
        "-d DEPTH -q REQUEST_HEX -r REPLY_HEX -o OUT");
}

int main(int argc, char **argv)
{
    const char *path = NULL, *mode = NULL, *out = NULL, *req_hex = NULL, *rep_hex = NULL;
    double seconds = -1;
    int processes = 1, connections = 1, depth = 1, opt, i, failed = 0;
    pid_t *pids;
    size_t total = 0;
    char part[4096];
    int outfd;

    while ((opt = getopt(argc, argv, "p:m:s:P:c:d:q:r:o:")) != -1) {
        switch (opt) {
        case 'p': path = optarg; break;
        case 'm': mode = optarg; break;
        case 's': seconds = atof(optarg); break;
        case 'P': processes = atoi(optarg); break;
        case 'c': connections = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 'q': req_hex = optarg; break;
        case 'r': rep_hex = optarg; break;
        case 'o': out = optarg; break;
        default: usage();
        }
    }
    if (!path || !mode || !out || !req_hex || !rep_hex || seconds < 0 || processes < 1
        || connections < 1 || depth < 1)
        usage();
    if (strcmp(mode, "conn") != 0 && strcmp(mode, "pipe") != 0)
        usage();
    if (strlen(path) >= sizeof addr.sun_path)
        die("socket path too long: %s", path);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    request = from_hex(req_hex, &request_len);
    reply = from_hex(rep_hex, &reply_len);
    signal(SIGPIPE, SIG_IGN);
    fflush(NULL);

    pids = xmalloc(processes * sizeof *pids);
    for (i = 0; i < processes; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            int fd;
            worker_index = i;
            if (strcmp(mode, "conn") == 0)
                run_conn(seconds, connections);
            else
                run_pipe(seconds, connections, (size_t)depth);
            snprintf(part, sizeof part, "%s.%d", out, i);
            fd = open(part, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd < 0)
                die("%s: %s", part, strerror(errno));
            write_all(fd, lat, lat_n * sizeof *lat, part);
            close(fd);
            _exit(0);
        }
        pids[i] = pid;
    }
    for (i = 0; i < processes; i++) {
        int status;
        while (waitpid(pids[i], &status, 0) < 0)
            if (errno != EINTR)
                die("waitpid: %s", strerror(errno));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }
    if (failed)
        die("%d of %d workers failed", failed, processes);

    outfd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (outfd < 0)
        die("%s: %s", out, strerror(errno));
    for (i = 0; i < processes; i++) {
        unsigned char buf[65536];
        ssize_t r;
        int fd;
        snprintf(part, sizeof part, "%s.%d", out, i);
        fd = open(part, O_RDONLY);
        if (fd < 0)
            die("%s: %s", part, strerror(errno));
        while ((r = read(fd, buf, sizeof buf)) > 0) {
            write_all(outfd, buf, (size_t)r, out);
            total += (size_t)r;
        }
        if (r < 0)
            die("%s: %s", part, strerror(errno));
        close(fd);
        unlink(part);
    }
    close(outfd);
    printf("ops %zu\n", total / sizeof(uint64_t));
    return 0;
}

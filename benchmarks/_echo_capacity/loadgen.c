/*
 * Echo-capacity load generator: the C twin of benchmarks/echo_capacity.py's Generator.
 *
 * N AudioSocket calls to 127.0.0.1:PORT from one thread: each sends its UUID message
 * (kind 0x01, 16 random bytes), then one 320-byte slin frame (kind 0x10) every 20 ms on
 * absolute deadlines, calls spread over the period in 1 ms slots (golden-ratio phase per
 * call index). Everything the server sends is read, its TLV headers parsed incrementally
 * (payloads are skipped, so no per-call buffer), every read time-stamped with
 * CLOCK_MONOTONIC; the same histograms as the Python generator are kept (10 us buckets):
 * |inter-arrival - 20 ms|, send lateness, blind time (busy between two epoll waits).
 *
 * Driven over stdin/stdout, one command a line, one JSON line answered per command:
 *   target N      ramp up to N calls at the ramp rate, or hang up the newest calls at once
 *   reset         clear the histograms and the per-call window counts
 *   measure 0|1   stop/start recording the histograms and window counts
 *   status        {"live", "up", "target", "server_closed", "connect_errors", "cpu_ns", "sys_ns", "runq_ns", ...}
 *   report        status plus the histograms and, per live call, [first, last, count]
 *   quit          hang up every call and exit (end of stdin does the same)
 *
 * Usage: loadgen PORT RAMP_RATE   (calls per second while ramping up)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define FRAME_NS 20000000LL
#define SLOT_NS 1000000LL
#define SLOTS 20
#define BUCKET_NS 10000LL
#define NBUCKETS 20000 /* up to 200 ms, then one overflow bucket */
#define PAYLOAD_LEN 320
#define FRAME_LEN (3 + PAYLOAD_LEN)
#define MAX_PENDING (50 * FRAME_LEN) /* more unsent than this and the call is hung up, as in Python */
#define RECV_CHUNK 262144
#define MAX_EVENTS 512
#define CMD_MAX 256

#define TAG_STDIN UINT64_MAX
#define TAG_TIMER (UINT64_MAX - 1)

typedef struct {
    int64_t max;
    int64_t n;
    int64_t counts[NBUCKETS + 1];
} hist_t;

typedef struct {
    int fd;
    int closed;
    int64_t index;
    int slot;
    /* incremental TLV parser: header bytes seen, payload bytes still to skip */
    uint8_t hdr[3];
    int hdr_have;
    uint32_t skip;
    int in_payload;
    /* bytes queued for sending: always the tail of a run of whole frames */
    uint32_t wpend;
    int64_t last, first, lastw, count, rx_total;
} call_t;

typedef struct {
    call_t **items;
    size_t len, cap;
} callvec_t;

static uint8_t FRAME[FRAME_LEN];
static uint8_t rxbuf[RECV_CHUNK];
static uint8_t txbuf[MAX_PENDING + 2 * FRAME_LEN];

static hist_t dev_h, late_h, blind_h;
static int64_t send_blocked;
static int measuring;

static callvec_t calls;         /* every call ever opened, in order (closed ones included) */
static callvec_t slots[SLOTS];  /* live calls per send slot, in opening order */
static int64_t live_count, target, next_index, server_closed, connect_errors;
static int64_t ramp_interval_ns, next_connect_ns;
static int port;
static int ep = -1;

static char cmdbuf[CMD_MAX];
static size_t cmdlen;
static int cmd_overflow;

static int64_t mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void hist_add(hist_t *h, int64_t value, int64_t count) {
    int64_t i = value / BUCKET_NS;
    if (i < 0)
        i = 0;
    h->counts[i < NBUCKETS ? i : NBUCKETS] += count;
    h->n += count;
    if (value > h->max)
        h->max = value;
}

static void vec_push(callvec_t *v, call_t *c) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        call_t **items = realloc(v->items, cap * sizeof *items);
        if (!items)
            die("realloc");
        v->items = items;
        v->cap = cap;
    }
    v->items[v->len++] = c;
}

static void vec_remove(callvec_t *v, const call_t *c) {
    for (size_t i = 0; i < v->len; i++) {
        if (v->items[i] == c) {
            memmove(&v->items[i], &v->items[i + 1], (v->len - i - 1) * sizeof *v->items);
            v->len--;
            return;
        }
    }
}

static void reset_stats(void) {
    memset(&dev_h, 0, sizeof dev_h);
    memset(&late_h, 0, sizeof late_h);
    memset(&blind_h, 0, sizeof blind_h);
    send_blocked = 0;
    for (size_t i = 0; i < calls.len; i++)
        calls.items[i]->first = calls.items[i]->lastw = calls.items[i]->count = 0;
}

/* --- calls ------------------------------------------------------------------------- */

static void close_call(call_t *c) {
    if (c->closed)
        return;
    c->closed = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    vec_remove(&slots[c->slot], c);
    live_count--;
}

static int send_all_blocking(int fd, const uint8_t *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void connect_one(void) {
    int64_t index = next_index++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_errors++;
        return;
    }
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0}; /* like Python's create_connection(timeout=2) */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    uint8_t hello[19] = {0x01, 0x00, 0x10};
    if (getrandom(hello + 3, 16, 0) != 16) {
        for (int i = 3; i < 19; i++)
            hello[i] = (uint8_t)rand();
    }
    hello[3 + 6] = (uint8_t)((hello[3 + 6] & 0x0F) | 0x40); /* a version-4 UUID */
    hello[3 + 8] = (uint8_t)((hello[3 + 8] & 0x3F) | 0x80);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        send_all_blocking(fd, hello, sizeof hello) < 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        close(fd);
        connect_errors++;
        return;
    }
    call_t *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc");
    c->fd = fd;
    c->index = index;
    double phase = fmod((double)index * ((sqrt(5.0) - 1.0) / 2.0), 1.0);
    c->slot = (int)(phase * SLOTS);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    vec_push(&calls, c);
    vec_push(&slots[c->slot], c);
    live_count++;
}

static void set_target(int64_t n) {
    target = n < 0 ? 0 : n;
    int64_t seen = 0;
    for (size_t i = 0; i < calls.len; i++) {
        call_t *c = calls.items[i];
        if (c->closed)
            continue;
        if (seen++ >= target)
            close_call(c);
    }
}

/* --- sending ----------------------------------------------------------------------- */

static void send_slot(int slot, int64_t late_ns) {
    callvec_t *v = &slots[slot];
    if (!v->len)
        return;
    if (measuring)
        hist_add(&late_h, late_ns, (int64_t)v->len);
    for (size_t i = 0; i < v->len;) {
        call_t *c = v->items[i];
        const uint8_t *data = FRAME;
        size_t len = FRAME_LEN;
        if (c->wpend) {
            /* the queued tail of whole frames, then this frame */
            size_t tail = c->wpend % FRAME_LEN, whole = c->wpend / FRAME_LEN, off = 0;
            if (tail) {
                memcpy(txbuf, FRAME + FRAME_LEN - tail, tail);
                off = tail;
            }
            for (size_t k = 0; k <= whole; k++, off += FRAME_LEN)
                memcpy(txbuf + off, FRAME, FRAME_LEN);
            data = txbuf;
            len = off;
            c->wpend = 0;
        }
        ssize_t sent = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                sent = 0;
            } else {
                close_call(c); /* removes it from this slot: same i next */
                continue;
            }
        }
        if ((size_t)sent < len) {
            /* the server is not reading: keep the rest (never half a frame on the wire) */
            send_blocked++;
            c->wpend = (uint32_t)(len - (size_t)sent);
            if (c->wpend > MAX_PENDING) {
                close_call(c);
                continue;
            }
        }
        i++;
    }
}

/* --- receiving --------------------------------------------------------------------- */

static void on_readable(call_t *c) {
    ssize_t got = recv(c->fd, rxbuf, sizeof rxbuf, 0);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    int64_t t = mono();
    if (got <= 0) {
        server_closed++;
        close_call(c);
        return;
    }
    int64_t frames = 0;
    int hung_up = 0;
    size_t off = 0, n = (size_t)got;
    while (off < n) {
        if (!c->in_payload) {
            while (c->hdr_have < 3 && off < n)
                c->hdr[c->hdr_have++] = rxbuf[off++];
            if (c->hdr_have < 3)
                break;
            c->skip = ((uint32_t)c->hdr[1] << 8) | c->hdr[2];
            c->in_payload = 1;
        }
        size_t take = n - off < c->skip ? n - off : c->skip;
        off += take;
        c->skip -= (uint32_t)take;
        if (c->skip)
            break;
        /* a whole message has arrived */
        uint8_t kind = c->hdr[0];
        if (kind >= 0x10 && kind <= 0x18)
            frames++;
        else if (kind == 0x00)
            hung_up = 1;
        c->in_payload = 0;
        c->hdr_have = 0;
    }
    if (frames) {
        if (measuring) {
            if (c->last) {
                int64_t d = t - c->last - FRAME_NS;
                hist_add(&dev_h, d < 0 ? -d : d, 1);
            }
            if (frames > 1) /* several frames in one read: they arrived back to back */
                hist_add(&dev_h, FRAME_NS, frames - 1);
            if (!c->first)
                c->first = t - (frames - 1) * FRAME_NS;
            c->lastw = t;
            c->count += frames;
        }
        c->last = t;
        c->rx_total += frames;
    }
    if (hung_up) {
        server_closed++;
        close_call(c);
    }
}

/* --- commands ---------------------------------------------------------------------- */

static int64_t tv_ns(struct timeval tv) {
    return (int64_t)tv.tv_sec * 1000000000LL + (int64_t)tv.tv_usec * 1000LL;
}

static int64_t runq_ns(void) {
    FILE *f = fopen("/proc/self/schedstat", "r");
    unsigned long long run = 0, wait = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2)
        wait = 0;
    fclose(f);
    return (int64_t)wait;
}

static void print_status(void) {
    int64_t up = 0;
    for (size_t i = 0; i < calls.len; i++)
        if (!calls.items[i]->closed && calls.items[i]->rx_total > 0)
            up++;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\"live\":%" PRId64 ",\"up\":%" PRId64 ",\"target\":%" PRId64 ",\"server_closed\":%" PRId64
           ",\"connect_errors\":%" PRId64 ",\"send_blocked\":%" PRId64 ",\"measuring\":%d"
           ",\"cpu_ns\":%" PRId64 ",\"sys_ns\":%" PRId64 ",\"runq_ns\":%" PRId64 ",\"now_ns\":%" PRId64,
           live_count, up, target, server_closed, connect_errors, send_blocked, measuring,
           tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime), tv_ns(ru.ru_stime), runq_ns(), mono());
}

static void print_hist(const char *name, const hist_t *h) {
    printf(",\"%s\":{\"n\":%" PRId64 ",\"max\":%" PRId64 ",\"buckets\":[", name, h->n, h->max);
    int first = 1;
    for (int i = 0; i <= NBUCKETS; i++) {
        if (!h->counts[i])
            continue;
        printf("%s[%d,%" PRId64 "]", first ? "" : ",", i, h->counts[i]);
        first = 0;
    }
    printf("]}");
}

static void print_report(void) {
    print_status();
    print_hist("dev", &dev_h);
    print_hist("send_late", &late_h);
    print_hist("blind", &blind_h);
    printf(",\"calls\":[");
    int first = 1;
    for (size_t i = 0; i < calls.len; i++) {
        const call_t *c = calls.items[i];
        if (c->closed)
            continue;
        printf("%s[%" PRId64 ",%" PRId64 ",%" PRId64 "]", first ? "" : ",", c->first, c->lastw, c->count);
        first = 0;
    }
    printf("]");
}

/* Runs one command line; returns 0 when asked to quit. */
static int run_command(const char *line) {
    char word[32] = "";
    long long arg = 0;
    int fields = sscanf(line, "%31s %lld", word, &arg);
    int keep_going = 1;
    printf("{\"ok\":");
    if (fields >= 2 && !strcmp(word, "target")) {
        set_target(arg);
        printf("true,");
        print_status();
    } else if (fields >= 1 && !strcmp(word, "reset")) {
        reset_stats();
        printf("true,");
        print_status();
    } else if (fields >= 2 && !strcmp(word, "measure")) {
        measuring = arg != 0;
        printf("true,");
        print_status();
    } else if (fields >= 1 && !strcmp(word, "status")) {
        printf("true,");
        print_status();
    } else if (fields >= 1 && !strcmp(word, "report")) {
        printf("true,");
        print_report();
    } else if (fields >= 1 && !strcmp(word, "quit")) {
        printf("true");
        keep_going = 0;
    } else {
        printf("false,\"error\":\"unknown command\"");
    }
    printf("}\n");
    fflush(stdout);
    return keep_going;
}

/* Reads what stdin has; returns 0 at end of input or on quit. */
static int on_stdin(void) {
    char chunk[CMD_MAX];
    ssize_t got = read(STDIN_FILENO, chunk, sizeof chunk);
    if (got < 0)
        return errno == EAGAIN || errno == EINTR;
    if (got == 0)
        return 0;
    for (ssize_t i = 0; i < got; i++) {
        if (chunk[i] != '\n') {
            if (cmdlen + 1 < CMD_MAX)
                cmdbuf[cmdlen++] = chunk[i];
            else
                cmd_overflow = 1;
            continue;
        }
        cmdbuf[cmdlen] = '\0';
        int keep_going = 1;
        if (cmd_overflow) {
            printf("{\"ok\":false,\"error\":\"command too long\"}\n");
            fflush(stdout);
        } else {
            keep_going = run_command(cmdbuf);
        }
        cmdlen = 0;
        cmd_overflow = 0;
        if (!keep_going)
            return 0;
    }
    return 1;
}

/* --- the loop ---------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT RAMP_RATE\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    double rate = atof(argv[2]);
    if (port <= 0 || port > 65535 || !(rate > 0)) {
        fprintf(stderr, "bad PORT or RAMP_RATE\n");
        return 2;
    }
    ramp_interval_ns = (int64_t)(1e9 / rate);
    for (int i = 0; i < PAYLOAD_LEN; i++) /* any 20 ms of slin (the same bytes as the Python generator) */
        FRAME[3 + i] = (uint8_t)((i * 37 + 11) & 0xFF);
    FRAME[0] = 0x10;
    FRAME[1] = PAYLOAD_LEN >> 8;
    FRAME[2] = PAYLOAD_LEN & 0xFF;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_STDIN};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0)
        die("epoll_ctl stdin");

    /* a 1 ms periodic timer on absolute deadlines: slot k is due at start + k ms */
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        die("timerfd_create");
    int64_t next_slot_ns = mono();
    struct itimerspec its = {
        .it_value = {.tv_sec = next_slot_ns / 1000000000LL, .tv_nsec = next_slot_ns % 1000000000LL},
        .it_interval = {.tv_sec = 0, .tv_nsec = SLOT_NS},
    };
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die("timerfd_settime");
    ev.data.u64 = TAG_TIMER;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0)
        die("epoll_ctl timerfd");

    static struct epoll_event events[MAX_EVENTS];
    int64_t slot_idx = 0;
    int64_t wake = mono();
    int running = 1;
    while (running) {
        int64_t now = mono();
        while (now >= next_slot_ns) {
            send_slot((int)(slot_idx % SLOTS), now - next_slot_ns);
            slot_idx++;
            next_slot_ns += SLOT_NS;
        }
        if (live_count < target && now >= next_connect_ns) {
            connect_one();
            int64_t floor_ns = now - 10 * ramp_interval_ns;
            next_connect_ns += ramp_interval_ns;
            if (next_connect_ns < floor_ns)
                next_connect_ns = floor_ns;
        }
        int64_t done = mono();
        if (measuring)
            hist_add(&blind_h, done - wake, 1);
        int nev = epoll_wait(ep, events, MAX_EVENTS, -1);
        wake = mono();
        if (nev < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < nev; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == TAG_TIMER) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("read timerfd");
            } else if (tag == TAG_STDIN) {
                if (!on_stdin())
                    running = 0;
            } else {
                call_t *c = events[i].data.ptr;
                if (!c->closed)
                    on_readable(c);
            }
        }
    }

    for (size_t i = 0; i < calls.len; i++) {
        close_call(calls.items[i]);
        free(calls.items[i]);
    }
    free(calls.items);
    for (int s = 0; s < SLOTS; s++)
        free(slots[s].items);
    close(tfd);
    close(ep);
    return 0;
}

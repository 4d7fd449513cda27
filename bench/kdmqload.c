/*
 * kdmqload: a small SIP load client for the dmq benchmarks (bench/run.py builds and runs it).
 *
 * It keeps a window of N requests outstanding over UDP to one server, matches each answer to
 * its request by Call-ID, and reports as one JSON line: requests answered per second, the
 * per-request latency (p50, p99), the answers' status codes, and its own CPU time. The CPU
 * time of the server's processes (given with --pids) is read from /proc/<pid>/stat at the
 * start and the end of the measured interval, so both sides are measured over the same time.
 *
 * Requests:
 *   --kind htable   KDMQ sip:htable@HOST:PORT, a Kamailio htable "set" action as JSON body
 *   --kind channel  KDMQ sip:CHANNEL@HOST:PORT with an empty body (--channel, e.g. a channel
 *                   no peer serves: answered 404)
 *   --kind trigger  MESSAGE sip:set@HOST:PORT with the key in X-Key and the value as body: the
 *                   bench nodes answer it by setting the key in their replicated table
 *
 * Keys are PREFIX<n>; with --keys K they cycle over K names, otherwise every request has its
 * own key (n = 0, 1, 2, ...).
 *
 * With --watch HOST:PORT,... (root: a packet socket on the loopback interface) it also follows
 * the replication of every key: each KDMQ request to a watched node that names a key of this
 * run, and that node's 200 answer to it (a request may carry several keys: dmq joins a backlog
 * of sets for another dmq node into one message). A key has reached a node when the node answers the
 * request carrying it (Kamailio and dmq both apply a set before answering). It then reports
 * the lag from sending each set to the moment the last watched node answered its replication
 * (p50, p99, max), the end-to-end rate (sets that reached every node per second, from the
 * first set sent to the last answer seen), and the packet socket's drops.
 *
 * Usage: kdmqload --target HOST:PORT --bind HOST [--kind K] [--window N] [--seconds S |
 *        --count C] [--warmup S] [--keys K] [--prefix P] [--channel C] [--pids P,P,...]
 *        [--watch HOST:PORT,...] [--settle S] [--timeout S]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 65536 /* in-flight table: a power of two above any window */
#define MAX_PIDS 256
#define MAX_WATCH 64

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

struct slot {
    uint64_t seq;
    double sent; /* CLOCK_MONOTONIC seconds; 0 = free */
};

static struct slot slots[SLOTS];
static double *latencies;
static size_t latency_count, latency_cap;

static const char *target_host, *bind_host, *kind = "htable", *channel = "nochannel", *prefix = "k";
static int target_port, window_size = 1, key_space = 0;
static double seconds = 0, warmup = 0, settle = 10, req_timeout = 1.0;
static long count = 0;
static int pids[MAX_PIDS], pid_count;

static struct in_addr watch_ip[MAX_WATCH];
static int watch_port[MAX_WATCH], watch_count;

/* Hosts whose packets the packet socket takes (host byte order, sorted): the watched nodes', or
 * those of --hosts when only counting traffic. */
#define MAX_HOSTS 1024
static uint32_t host_ip[MAX_HOSTS];
static int host_count;
static double sniff_seconds;
static long counted_packets, counted_bytes, counted_requests, counted_retransmissions, distinct_requests;

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int known_host(uint32_t ip) { return bsearch(&ip, host_ip, host_count, sizeof ip, cmp_u32) != NULL; }

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double own_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of the given processes, in seconds (a vanished process counts 0). */
static double pids_cpu(void)
{
    long ticks = sysconf(_SC_CLK_TCK);
    unsigned long long total = 0;
    for (int i = 0; i < pid_count; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (!p)
            continue;
        /* after ") ": state(3) ... utime is field 14, stime 15 of the whole line */
        unsigned long long ut = 0, st = 0;
        int field = 2;
        for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
            field++;
            if (field == 14)
                ut = strtoull(tok, NULL, 10);
            else if (field == 15) {
                st = strtoull(tok, NULL, 10);
                break;
            }
        }
        total += ut + st;
    }
    return (double)total / ticks;
}

static void die(const char *what)
{
    fprintf(stderr, "kdmqload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(const char *why)
{
    fprintf(stderr, "kdmqload: %s\nsee the comment at the top of bench/kdmqload.c\n", why);
    exit(2);
}

static void parse_hostport(const char *text, struct in_addr *ip, int *port)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || colon - text >= (long)sizeof host)
        usage("expected HOST:PORT");
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    if (inet_pton(AF_INET, host, ip) != 1)
        usage("expected an IPv4 HOST");
    *port = atoi(colon + 1);
}

/* -- requests ------------------------------------------------------------------------------- */

static char local_host[64];
static int local_port;
static char run_id[16];

static long key_of(uint64_t seq) { return key_space > 0 ? (long)(seq % key_space) : (long)seq; }

static int build_request(char *out, size_t size, uint64_t seq)
{
    char body[256] = "";
    char extra[128] = "";
    const char *method = "KDMQ", *user = channel, *ctype = "text/plain";
    if (strcmp(kind, "htable") == 0) {
        user = "htable";
        ctype = "application/json";
        snprintf(body, sizeof body,
                 "{\"action\":2,\"htname\":\"t\",\"cname\":\"%s%ld\",\"type\":2,\"strval\":\"%032lu\",\"mode\":0}",
                 prefix, key_of(seq), (unsigned long)seq);
    } else if (strcmp(kind, "trigger") == 0) {
        method = "MESSAGE";
        user = "set";
        snprintf(extra, sizeof extra, "X-Key: %s%ld\r\n", prefix, key_of(seq));
        snprintf(body, sizeof body, "%032lu", (unsigned long)seq);
    }
    return snprintf(out, size,
                    "%s sip:%s@%s:%d SIP/2.0\r\n"
                    "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s.%lu;rport\r\n"
                    "From: <sip:%s@%s:%d>;tag=%s\r\n"
                    "To: <sip:%s@%s:%d>\r\n"
                    "Call-ID: %lu.%s@%s\r\n"
                    "CSeq: 10 %s\r\n"
                    "Max-Forwards: 1\r\n"
                    "%s"
                    "Content-Type: %s\r\n"
                    "Content-Length: %zu\r\n\r\n%s",
                    method, user, target_host, target_port, local_host, local_port, run_id, (unsigned long)seq,
                    user, local_host, local_port, run_id, user, target_host, target_port, (unsigned long)seq, run_id,
                    local_host, method, extra, ctype, strlen(body), body);
}

/* The value of header `name` (with its compact form `compact`) in a SIP message, or NULL. */
static const char *header(const char *msg, size_t len, const char *name, const char *compact, size_t *vlen)
{
    const char *end = msg + len;
    const char *p = memchr(msg, '\n', len);
    size_t nlen = strlen(name), clen = strlen(compact);
    while (p && p + 1 < end) {
        p++;
        if (*p == '\r' || *p == '\n')
            return NULL; /* end of headers */
        const char *v = NULL;
        if ((size_t)(end - p) > nlen && strncasecmp(p, name, nlen) == 0 && (p[nlen] == ':' || p[nlen] == ' '))
            v = p + nlen;
        else if ((size_t)(end - p) > clen && strncasecmp(p, compact, clen) == 0 && (p[clen] == ':' || p[clen] == ' '))
            v = p + clen;
        if (v) {
            while (v < end && (*v == ' ' || *v == ':'))
                v++;
            const char *e = v;
            while (e < end && *e != '\r' && *e != '\n')
                e++;
            *vlen = e - v;
            return v;
        }
        p = memchr(p, '\n', end - p);
    }
    return NULL;
}

/* Answer a KDMQ the server sends us (its pings, once it knows this client as a member) with a
 * stateless 200 without a body, so the server keeps the client active. */
static void answer_ping(int fd, const char *msg, size_t len)
{
    static const char *names[][2] = {{"Via", "v"}, {"From", "f"}, {"To", "t"}, {"Call-ID", "i"}, {"CSeq", "_"}};
    char out[2048];
    int n = snprintf(out, sizeof out, "SIP/2.0 200 OK\r\n");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t vlen;
        const char *v = header(msg, len, names[i][0], names[i][1], &vlen);
        if (!v || vlen > 400)
            return;
        n += snprintf(out + n, sizeof out - n, "%s: %.*s%s\r\n", names[i][0], (int)vlen, v,
                      i == 2 && !memmem(v, vlen, ";tag=", 5) ? ";tag=kdmqload" : "");
    }
    n += snprintf(out + n, sizeof out - n, "Content-Length: 0\r\n\r\n");
    send(fd, out, n, 0);
}

/* -- watching the replication on the loopback interface ------------------------------------ */

struct track {
    double sent;          /* CLOCK_REALTIME when the set was sent; 0 before */
    double last;          /* when the last watched node answered its replication */
    unsigned char *seen;  /* per watched node: answered */
    int nodes_seen;
};

static struct track *tracks;
static long track_count, keys_complete;
static double last_arrival;

/* Call-IDs of replication requests seen: open addressing, Call-ID hash -> (key, node). */
#define PENDING 262144
struct pending {
    uint64_t hash;
    long key;
};
static struct pending pending[PENDING];
static long sniffed_requests, sniffed_answers, unmatched_answers;

static uint64_t hash_bytes(const char *p, size_t n, int node)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)node;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h | 1;
}

static void pending_put(uint64_t h, long key)
{
    for (size_t i = h & (PENDING - 1);; i = (i + 1) & (PENDING - 1)) {
        if (pending[i].hash == 0 || pending[i].hash == h) {
            pending[i].hash = h;
            pending[i].key = key;
            return;
        }
    }
}

static struct pending *pending_get(uint64_t h)
{
    for (size_t i = h & (PENDING - 1);; i = (i + 1) & (PENDING - 1)) {
        if (pending[i].hash == 0)
            return NULL;
        if (pending[i].hash == h)
            return &pending[i];
    }
}

static int watched(struct in_addr ip, int port)
{
    for (int i = 0; i < watch_count; i++)
        if (watch_ip[i].s_addr == ip.s_addr && watch_port[i] == port)
            return i;
    return -1;
}

/* The key number named by the first "cname":"PREFIX<n>" in body[0, len), or -1; *next is set
 * to where the search for another goes on (a message may carry several sets). */
static long body_key(const char *body, size_t len, const char **next)
{
    size_t plen = strlen(prefix);
    const char *end = body + len, *p = memmem(body, len, "\"cname\"", 7);
    *next = end;
    if (!p)
        return -1;
    p += 7;
    *next = p;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p != '"')
        return -1;
    p++;
    if ((size_t)(end - p) <= plen || memcmp(p, prefix, plen) != 0)
        return -1;
    char *stop;
    long n = strtol(p + plen, &stop, 10);
    return stop < end && *stop == '"' && n >= 0 && n < track_count ? n : -1;
}

/* The pending entry of the index-th key of the request with this Call-ID to watched node `node`. */
static uint64_t key_hash(const char *cid, size_t clen, int node, int index)
{
    return hash_bytes(cid, clen, node | index << 8);
}

static void on_packet(const unsigned char *pkt, size_t len, double stamp)
{
    if (len < 28 || (pkt[0] >> 4) != 4 || pkt[9] != 17)
        return;
    size_t ihl = (pkt[0] & 15) * 4;
    if (len < ihl + 8)
        return;
    struct in_addr src, dst;
    memcpy(&src, pkt + 12, 4);
    memcpy(&dst, pkt + 16, 4);
    int sport = pkt[ihl] << 8 | pkt[ihl + 1], dport = pkt[ihl + 2] << 8 | pkt[ihl + 3];
    const char *msg = (const char *)pkt + ihl + 8;
    size_t mlen = len - ihl - 8;
    if (sniff_seconds > 0) { /* counting only: every datagram a listed host sends */
        if (known_host(ntohl(src.s_addr))) {
            counted_packets++;
            counted_bytes += (long)(len - ihl - 8);
            const char *msg = (const char *)pkt + ihl + 8;
            size_t mlen = len - ihl - 8, clen, blen;
            if (mlen > 8 && memcmp(msg, "SIP/2.0 ", 8) != 0) {
                /* a request: the same branch from the same sender again is a retransmission */
                const char *via = header(msg, mlen, "Via", "v", &clen);
                const char *branch = via ? memmem(via, clen, "branch=", 7) : NULL;
                if (branch) {
                    blen = clen - (size_t)(branch - via);
                    for (size_t i = 7; i < blen; i++)
                        if (branch[i] == ';' || branch[i] == ',' || branch[i] == ' ') {
                            blen = i;
                            break;
                        }
                    counted_requests++;
                    uint64_t h = hash_bytes(branch, blen, (int)src.s_addr ^ sport);
                    if (pending_get(h))
                        counted_retransmissions++;
                    else if (distinct_requests < PENDING / 2) {
                        pending_put(h, 0);
                        distinct_requests++;
                    }
                }
            }
        }
        return;
    }
    int to = watched(dst, dport), from = watched(src, sport);
    size_t clen;
    if (to >= 0 && mlen > 5 && memcmp(msg, "KDMQ ", 5) == 0) {
        const char *cid = header(msg, mlen, "Call-ID", "i", &clen);
        const char *body = memmem(msg, mlen, "\r\n\r\n", 4);
        if (!cid || !body)
            return;
        const char *p = body + 4, *end = msg + mlen;
        for (int index = 0; p < end;) {
            long key = body_key(p, (size_t)(end - p), &p);
            if (key >= 0) {
                sniffed_requests++;
                pending_put(key_hash(cid, clen, to, index++), key);
            }
        }
    } else if (from >= 0 && mlen > 12 && memcmp(msg, "SIP/2.0 200", 11) == 0) {
        const char *cid = header(msg, mlen, "Call-ID", "i", &clen);
        struct pending *p = cid ? pending_get(key_hash(cid, clen, from, 0)) : NULL;
        if (!p) {
            if (cid)
                unmatched_answers++;
            return;
        }
        sniffed_answers++;
        for (int index = 1; p; p = pending_get(key_hash(cid, clen, from, index++))) {
            struct track *t = &tracks[p->key];
            if (t->seen[from])
                continue;
            t->seen[from] = 1;
            if (++t->nodes_seen == watch_count) {
                t->last = stamp;
                keys_complete++;
                if (stamp > last_arrival)
                    last_arrival = stamp;
            }
        }
    }
}

static int open_watch(void)
{
    int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (fd < 0)
        die("packet socket (needs root)");
    int one = 1, big = 64 << 20;
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    /* Kernel filter: UDP packets from or to a watched host only (offsets from the IP header), as
     * ranges of consecutive addresses: 0: ldb [9]; 1: jeq 17 else drop; ld [12] (source); per
     * range: jge low else skip, jgt high else accept; ld [16] (destination); the same; drop; accept.
     * With more ranges than one jump reaches, every UDP packet is taken and sorted out here. */
    uint32_t lo[MAX_HOSTS], hi[MAX_HOSTS];
    int r = 0;
    for (int i = 0; i < host_count; i++) {
        if (r > 0 && host_ip[i] == hi[r - 1] + 1)
            hi[r - 1] = host_ip[i];
        else if (!(r > 0 && host_ip[i] == hi[r - 1]))
            lo[r] = hi[r] = host_ip[i], r++;
    }
    struct sock_filter code[8 + 4 * MAX_HOSTS];
    int n = 0;
    if (r > 60) {
        code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9);
        code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 1, 0);
        code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);
        code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 65535);
    } else {
        int drop = 4 + 4 * r, accept = drop + 1;
        code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9);
        code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 0, (unsigned char)(drop - 2));
        for (int part = 0; part < 2; part++) {
            code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, part ? 16 : 12);
            for (int i = 0; i < r; i++) {
                code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, lo[i], 0, 1);
                n++;
                code[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, hi[i], 0, (unsigned char)(accept - n - 1));
                n++;
            }
        }
        code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);
        code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 65535);
    }
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = code};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
        die("attach filter");
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)if_nametoindex("lo")};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        die("bind packet socket to lo");
    /* drop what arrived before the filter was in place */
    unsigned char junk[65536];
    while (recv(fd, junk, sizeof junk, MSG_DONTWAIT) > 0)
        ;
    struct tpacket_stats st;
    socklen_t sl = sizeof st;
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl); /* reset the counters */
    return fd;
}

static void read_watch(int fd)
{
    unsigned char buf[65536];
    char control[256];
    for (;;) {
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n <= 0)
            return;
        double stamp = now_real();
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                stamp = ts.tv_sec + ts.tv_nsec / 1e9;
            }
        on_packet(buf, (size_t)n, stamp);
    }
}

/* Count the datagrams and payload bytes the --hosts send for --sniff-seconds, and the CPU of
 * --pids meanwhile. */
static int count_traffic(void)
{
    if (host_count == 0)
        usage("--sniff-seconds needs --hosts");
    int wfd = open_watch();
    double cpu0 = own_cpu(), server0 = pids_cpu(), start = now_mono();
    while (now_mono() - start < sniff_seconds) {
        struct pollfd pfd = {wfd, POLLIN, 0};
        if (poll(&pfd, 1, 50) > 0)
            read_watch(wfd);
    }
    double elapsed = now_mono() - start;
    struct tpacket_stats st = {0};
    socklen_t sl = sizeof st;
    getsockopt(wfd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
    printf("{\"elapsed_s\":%.6f,\"packets\":%ld,\"bytes\":%ld,\"requests\":%ld,\"retransmissions\":%ld,"
           "\"sniff_drops\":%u,\"client_cpu_s\":%.6f,\"server_cpu_s\":%.6f}\n",
           elapsed, counted_packets, counted_bytes, counted_requests, counted_retransmissions, st.tp_drops,
           own_cpu() - cpu0, pids_cpu() - server0);
    return 0;
}

/* -- results -------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, size_t n, double q)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(q * (n - 1) + 0.5);
    return v[i];
}

static void record_latency(double v)
{
    if (latency_count == latency_cap) {
        latency_cap = latency_cap ? latency_cap * 2 : 1 << 16;
        latencies = realloc(latencies, latency_cap * sizeof *latencies);
        if (!latencies)
            die("realloc");
    }
    latencies[latency_count++] = v;
}

int main(int argc, char **argv)
{
    const char *target = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage("every option takes a value");
        i++;
        if (!strcmp(a, "--target"))
            target = v;
        else if (!strcmp(a, "--bind"))
            bind_host = v;
        else if (!strcmp(a, "--kind"))
            kind = v;
        else if (!strcmp(a, "--channel"))
            channel = v;
        else if (!strcmp(a, "--prefix"))
            prefix = v;
        else if (!strcmp(a, "--window"))
            window_size = atoi(v);
        else if (!strcmp(a, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(a, "--count"))
            count = atol(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--keys"))
            key_space = atoi(v);
        else if (!strcmp(a, "--settle"))
            settle = atof(v);
        else if (!strcmp(a, "--timeout"))
            req_timeout = atof(v);
        else if (!strcmp(a, "--pids")) {
            char *copy = strdup(v);
            for (char *t = strtok(copy, ","); t && pid_count < MAX_PIDS; t = strtok(NULL, ","))
                pids[pid_count++] = atoi(t);
        } else if (!strcmp(a, "--hosts")) {
            char *copy = strdup(v);
            for (char *t = strtok(copy, ","); t && host_count < MAX_HOSTS; t = strtok(NULL, ",")) {
                struct in_addr ip;
                if (inet_pton(AF_INET, t, &ip) != 1)
                    usage("--hosts takes IPv4 addresses");
                host_ip[host_count++] = ntohl(ip.s_addr);
            }
        } else if (!strcmp(a, "--sniff-seconds"))
            sniff_seconds = atof(v);
        else if (!strcmp(a, "--watch")) {
            char *copy = strdup(v);
            for (char *t = strtok(copy, ","); t && watch_count < MAX_WATCH; t = strtok(NULL, ","))
                parse_hostport(t, &watch_ip[watch_count], &watch_port[watch_count]), watch_count++;
        } else
            usage("unknown option");
    }
    for (int i = 0; i < watch_count && host_count < MAX_HOSTS; i++)
        host_ip[host_count++] = ntohl(watch_ip[i].s_addr);
    qsort(host_ip, host_count, sizeof *host_ip, cmp_u32);
    if (sniff_seconds > 0)
        return count_traffic();
    if (!target || !bind_host)
        usage("--target and --bind are required");
    if (window_size < 1 || window_size > SLOTS / 2)
        usage("--window out of range");
    if ((seconds <= 0) == (count <= 0))
        usage("give either --seconds or --count");
    if (strcmp(kind, "htable") && strcmp(kind, "channel") && strcmp(kind, "trigger"))
        usage("--kind is htable, channel or trigger");
    if (watch_count && (count <= 0 || key_space > 0 || warmup > 0))
        usage("--watch needs --count, one key per set and no warmup");
    static char thost[64];
    struct in_addr tip;
    parse_hostport(target, &tip, &target_port);
    inet_ntop(AF_INET, &tip, thost, sizeof thost);
    target_host = thost;
    snprintf(run_id, sizeof run_id, "%x%x", (unsigned)getpid(), (unsigned)(now_real() * 1000) & 0xffff);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    int big = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct sockaddr_in local = {.sin_family = AF_INET};
    if (strchr(bind_host, ':')) {
        int bport;
        parse_hostport(bind_host, &local.sin_addr, &bport);
        local.sin_port = htons(bport);
    } else if (inet_pton(AF_INET, bind_host, &local.sin_addr) != 1)
        usage("--bind is an IPv4 address, with or without a port");
    if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0)
        die("bind");
    socklen_t llen = sizeof local;
    getsockname(fd, (struct sockaddr *)&local, &llen);
    inet_ntop(AF_INET, &local.sin_addr, local_host, sizeof local_host);
    local_port = ntohs(local.sin_port);
    struct sockaddr_in dest = {.sin_family = AF_INET, .sin_addr = tip, .sin_port = htons(target_port)};
    if (connect(fd, (struct sockaddr *)&dest, sizeof dest) < 0)
        die("connect");

    int wfd = -1;
    if (watch_count) {
        track_count = count;
        tracks = calloc(count, sizeof *tracks);
        unsigned char *seen = calloc((size_t)count * watch_count, 1);
        if (!tracks || !seen)
            die("calloc");
        for (long i = 0; i < count; i++)
            tracks[i].seen = seen + i * watch_count;
        wfd = open_watch();
    }

    char req[2048], buf[65536];
    uint64_t next_seq = 0, oldest = 0;
    long outstanding = 0, answered = 0, lost = 0, code_200 = 0, code_404 = 0, other_codes = 0;
    double start = now_mono(), measure_from = start + warmup, measure_to = seconds > 0 ? measure_from + seconds : 0;
    int measuring = warmup <= 0;
    double cpu0 = own_cpu(), server0 = pids_cpu(), t_measure = start, real_start = now_real();
    long answered_at_start = 0;
    double last_answer_real = 0, last_answer_mono = start;
    /* the measured interval's end: when sending stops (--seconds) or the last answer (--count) */
    double t_end = 0, cpu_end = 0, server_end = 0;
    long answered_at_end = 0;
    int sending = 1;

    for (;;) {
        double t = now_mono();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            t_measure = t;
            cpu0 = own_cpu();
            server0 = pids_cpu();
            answered_at_start = answered;
            latency_count = 0;
        }
        if (sending && ((count > 0 && (long)next_seq >= count) || (measure_to > 0 && t >= measure_to))) {
            sending = 0;
            if (measure_to > 0) { /* answers still on their way are not counted */
                t_end = t;
                cpu_end = own_cpu();
                server_end = pids_cpu();
                answered_at_end = answered;
            }
        }
        while (sending && outstanding < window_size && !(count > 0 && (long)next_seq >= count)) {
            int len = build_request(req, sizeof req, next_seq);
            struct slot *s = &slots[next_seq & (SLOTS - 1)];
            if (s->sent != 0) { /* wrapped onto a request still open: count it lost */
                s->sent = 0;
                outstanding--;
                lost++;
            }
            s->seq = next_seq;
            s->sent = now_mono();
            if (watch_count)
                tracks[next_seq].sent = now_real();
            if (send(fd, req, len, 0) < 0 && errno != ECONNREFUSED)
                die("send");
            next_seq++;
            outstanding++;
        }
        if (!sending && outstanding == 0 && (!watch_count || keys_complete >= count))
            break;
        struct pollfd pfd[2] = {{fd, POLLIN, 0}, {wfd, POLLIN, 0}};
        int ready = poll(pfd, wfd >= 0 ? 2 : 1, 50);
        if (ready < 0 && errno != EINTR)
            die("poll");
        if (wfd >= 0 && (pfd[1].revents & POLLIN))
            read_watch(wfd);
        while (pfd[0].revents & POLLIN) {
            ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
            if (n <= 0)
                break;
            if (n > 5 && memcmp(buf, "KDMQ ", 5) == 0) {
                answer_ping(fd, buf, (size_t)n);
                continue;
            }
            if (n < 12 || memcmp(buf, "SIP/2.0 ", 8) != 0)
                continue;
            int code = atoi(buf + 8);
            if (code < 200)
                continue;
            size_t clen;
            const char *cid = header(buf, (size_t)n, "Call-ID", "i", &clen);
            if (!cid)
                continue;
            uint64_t seq = strtoull(cid, NULL, 10);
            struct slot *s = &slots[seq & (SLOTS - 1)];
            if (s->sent == 0 || s->seq != seq)
                continue; /* late answer to a request given up on */
            double done = now_mono();
            if (measuring)
                record_latency(done - s->sent);
            s->sent = 0;
            outstanding--;
            answered++;
            last_answer_real = now_real();
            last_answer_mono = done;
            if (code == 200)
                code_200++;
            else if (code == 404)
                code_404++;
            else
                other_codes++;
        }
        /* give up on requests unanswered for --timeout */
        double limit = now_mono() - req_timeout;
        while (oldest < next_seq) {
            struct slot *s = &slots[oldest & (SLOTS - 1)];
            if (s->sent != 0 && s->seq == oldest) {
                if (s->sent > limit)
                    break;
                s->sent = 0;
                outstanding--;
                lost++;
            }
            oldest++;
        }
        if (watch_count && !sending && outstanding == 0 && now_real() - last_answer_real > settle)
            break; /* replication never completed: report what arrived */
    }
    if (t_end == 0) {
        t_end = last_answer_mono;
        cpu_end = own_cpu();
        server_end = pids_cpu();
        answered_at_end = answered;
    }
    double cpu = cpu_end - cpu0, server = server_end - server0;
    double elapsed = t_end - t_measure;
    long measured = answered_at_end - answered_at_start;
    qsort(latencies, latency_count, sizeof *latencies, cmp_double);
    printf("{\"kind\":\"%s\",\"window\":%d,\"sent\":%lu,\"answered\":%ld,\"measured\":%ld,\"lost\":%ld,"
           "\"code_200\":%ld,\"code_404\":%ld,\"other_codes\":%ld,\"elapsed_s\":%.6f,\"rate\":%.1f,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"client_cpu_s\":%.6f,\"server_cpu_s\":%.6f,"
           "\"server_cpu_us_per_request\":%.2f,\"client_cpu_share\":%.4f",
           kind, window_size, (unsigned long)next_seq, answered, measured, lost, code_200, code_404, other_codes,
           elapsed, measured / elapsed, percentile(latencies, latency_count, 0.5) * 1e6,
           percentile(latencies, latency_count, 0.99) * 1e6, cpu, server,
           measured ? server / measured * 1e6 : -1.0, cpu / elapsed);
    if (watch_count) {
        struct tpacket_stats st = {0};
        socklen_t sl = sizeof st;
        getsockopt(wfd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
        double *lags = malloc(sizeof(double) * (size_t)count);
        long nl = 0;
        for (long i = 0; i < count; i++)
            if (tracks[i].last > 0)
                lags[nl++] = tracks[i].last - tracks[i].sent;
        qsort(lags, nl, sizeof *lags, cmp_double);
        double span = last_arrival - real_start;
        printf(",\"watched_nodes\":%d,\"keys_everywhere\":%ld,\"replicated_rate\":%.1f,\"span_s\":%.6f,"
               "\"lag_p50_ms\":%.3f,\"lag_p99_ms\":%.3f,\"lag_max_ms\":%.3f,\"tail_ms\":%.3f,"
               "\"sniffed_requests\":%ld,\"sniffed_answers\":%ld,\"unmatched_answers\":%ld,"
               "\"sniff_drops\":%u,\"server_cpu_ms_per_set\":%.4f",
               watch_count, keys_complete, span > 0 ? keys_complete / span : 0.0, span,
               percentile(lags, nl, 0.5) * 1e3, percentile(lags, nl, 0.99) * 1e3, nl ? lags[nl - 1] * 1e3 : -1.0,
               last_arrival > 0 ? (last_arrival - last_answer_real) * 1e3 : -1.0, sniffed_requests,
               sniffed_answers, unmatched_answers, st.tp_drops, keys_complete ? server / keys_complete * 1e3 : -1.0);
    }
    printf("}\n");
    return 0;
}

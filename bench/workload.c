// SPDX-License-Identifier: Apache-2.0
// Benchmark workloads for scripts/bench. Each times itself with
// CLOCK_MONOTONIC and prints the elapsed nanoseconds, so an agent's own
// start-up never counts against the workload.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void execs(long n) {
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        waitpid(pid, NULL, 0);
    }
}

static void opens(long n, const char *path) {
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { perror(path); exit(1); }
        close(fd);
    }
}

static void connects(long n, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0) { perror("connect"); exit(1); }
        close(s);
    }
}

static void lookups(long n) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    for (long i = 0; i < n; i++) {
        if (getaddrinfo("localhost", NULL, &hints, &res) != 0) { fprintf(stderr, "getaddrinfo failed\n"); exit(1); }
        freeaddrinfo(res);
    }
}

/* Accepts and closes connections forever: the peer of the connect storm. */
static int serve(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 4096)) { perror("listen"); return 1; }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) close(c);
    }
}

/* Times a whole command (git, make) from fork to exit. */
static int run(char **cmd) {
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execvp(cmd[0], cmd);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "serve")) return serve(atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "run")) {
        long long start = now_ns();
        int rc = run(argv + 2);
        printf("%lld\n", now_ns() - start);
        return rc;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: workload exec|open|connect|gai N [path|port] | serve PORT | run CMD...\n");
        return 2;
    }
    long n = atol(argv[2]);
    long long start = now_ns();
    if (!strcmp(argv[1], "exec")) execs(n);
    else if (!strcmp(argv[1], "open") && argc > 3) opens(n, argv[3]);
    else if (!strcmp(argv[1], "connect") && argc > 3) connects(n, atoi(argv[3]));
    else if (!strcmp(argv[1], "gai")) lookups(n);
    else { fprintf(stderr, "unknown workload %s\n", argv[1]); return 2; }
    printf("%lld\n", now_ns() - start);
    return 0;
}

/*
 * portability-agent: runs commands for the host over one byte stream.
 *
 * Built static by portability/agent/__init__.py so it runs in any Linux userland
 * (busybox images, distroless images, a kernel VM's initramfs). One persistent stream
 * replaces one `docker exec` / SSH channel / VM round trip per command; every command is
 * still a fresh process with its own exit code, stdout, stderr, stdin, env and cwd.
 *
 *   agent serve [DEVICE]   serve requests on stdin/stdout, or on DEVICE (a virtio-serial port)
 *   agent init             idle PID 1 for a container: reaps orphans, exits on SIGTERM
 *
 * Protocol (integers little-endian; see portability/agent/channel.py):
 *   host -> agent  'R' u32 len payload     run a command (payload layout in read_request)
 *                  'P' u32 0               ping; answered with 'H'
 *                  'Q' u32 0               quit (poweroff when PID 1 of a VM)
 *   agent -> host  'O' u32 len bytes       stdout chunk
 *                  'E' u32 len bytes       stderr chunk
 *                  'X' u32 8 i32 status u32 flags   end of command; flags bit 0 = timed out
 *                  'H' u32 len text        pong: "portability-agent 1 <uname -r>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GRACE_MS 200 /* after the command exits, how long to wait for stray pipe holders */

static int in_fd = 0, out_fd = 1;
static const char *device;
static int sigchld_pipe[2];

static void die(const char *what) {
    fprintf(stderr, "portability-agent: %s: %s\n", what, strerror(errno));
    _exit(70);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reopen_device(void) {
    for (;;) {
        if (in_fd > 2) close(in_fd);
        in_fd = out_fd = open(device, O_RDWR | O_CLOEXEC);
        if (in_fd >= 0) return;
        usleep(20000);
    }
}

/* Read exactly n bytes; returns 0 on success, -1 on EOF before any byte of a frame. */
static int read_full(void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(in_fd, (char *)buf + got, n - got);
        if (r > 0) { got += r; continue; }
        if (r < 0 && errno == EINTR) continue;
        if (device) { usleep(20000); if (r < 0) reopen_device(); continue; }
        if (r == 0 && got == 0) return -1;
        if (r == 0) { errno = EPIPE; die("short frame"); }
        die("read");
    }
    return 0;
}

static void write_full(const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(out_fd, (const char *)buf + put, n - put);
        if (w > 0) { put += w; continue; }
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (device) { reopen_device(); return; }
        die("write");
    }
}

static void send_frame(char type, const void *data, uint32_t len) {
    char head[5];
    head[0] = type;
    memcpy(head + 1, &len, 4);
    if (len <= 65536) {
        static char buf[5 + 65536];
        memcpy(buf, head, 5);
        memcpy(buf + 5, data, len);
        write_full(buf, 5 + len);
    } else {
        write_full(head, 5);
        write_full(data, len);
    }
}

/* Payload cursor helpers. */
struct cursor { char *p, *end; };
static uint32_t take_u32(struct cursor *c) {
    uint32_t v;
    if (c->end - c->p < 4) { errno = EPROTO; die("truncated request"); }
    memcpy(&v, c->p, 4);
    c->p += 4;
    return v;
}
static char *take_str(struct cursor *c, uint32_t *len_out) {
    uint32_t len = take_u32(c);
    if ((uint32_t)(c->end - c->p) < len) { errno = EPROTO; die("truncated request"); }
    char *s = c->p;
    c->p += len;
    if (len_out) *len_out = len;
    return s;
}
/* Copy a length-prefixed string into a fresh NUL-terminated buffer. */
static char *take_cstr(struct cursor *c) {
    uint32_t len;
    char *s = take_str(c, &len);
    char *r = malloc(len + 1);
    memcpy(r, s, len);
    r[len] = 0;
    return r;
}

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    if (write(sigchld_pipe[1], "c", 1) < 0) { /* pipe full: a wake-up is already pending */ }
    errno = saved;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/*
 * payload: i32 timeout_ms (<0: none) | u8 shell | u32 argc {u32 len, bytes}*argc
 *          | u32 envc {u32 len, "K=V"}*envc | u32 len cwd | u32 len stdin
 */
static void run_request(char *payload, uint32_t len) {
    struct cursor c = {payload, payload + len};
    int32_t timeout_ms = (int32_t)take_u32(&c);
    if (c.p >= c.end) { errno = EPROTO; die("truncated request"); }
    int shell = *c.p++;
    uint32_t argc = take_u32(&c);
    char **argv = calloc(argc + 4, sizeof(char *));
    int a = 0;
    if (shell) { argv[a++] = "/bin/sh"; argv[a++] = "-c"; }
    for (uint32_t i = 0; i < argc; i++) argv[a++] = take_cstr(&c);
    argv[a] = NULL;
    uint32_t envc = take_u32(&c);
    char **envs = calloc(envc + 1, sizeof(char *));
    for (uint32_t i = 0; i < envc; i++) envs[i] = take_cstr(&c);
    char *cwd = take_cstr(&c);
    uint32_t stdin_len;
    char *stdin_data = take_str(&c, &stdin_len);

    int pin[2], pout[2], perr[2], pexec[2];
    if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC) ||
        pipe2(pexec, O_CLOEXEC))
        die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        setsid();
        signal(SIGPIPE, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        for (uint32_t i = 0; i < envc; i++) putenv(envs[i]);
        if (cwd[0] && chdir(cwd) != 0) {
            dprintf(2, "portability-agent: cannot change directory to %s: %s\n", cwd, strerror(errno));
            int code = 1;
            if (write(pexec[1], &code, sizeof code) < 0) {}
            _exit(1);
        }
        execvp(argv[0], argv);
        int code = errno == ENOENT ? 127 : 126;
        dprintf(2, "portability-agent: %s: %s\n", argv[0], strerror(errno));
        if (write(pexec[1], &code, sizeof code) < 0) {}
        _exit(code);
    }
    close(pin[0]); close(pout[1]); close(perr[1]); close(pexec[1]); close(pexec[0]);
    for (uint32_t i = 0; i < argc; i++) free(argv[i + (shell ? 2 : 0)]);
    free(argv);
    for (uint32_t i = 0; i < envc; i++) free(envs[i]);
    free(envs);
    free(cwd);

    int fd_in = pin[1], fd_out = pout[0], fd_err = perr[0];
    set_nonblock(fd_in); set_nonblock(fd_out); set_nonblock(fd_err);
    uint32_t stdin_off = 0;
    if (stdin_len == 0) { close(fd_in); fd_in = -1; }

    int status = 0, exited = 0, timed_out = 0;
    int64_t start = now_ms(), exited_at = 0;
    static char buf[65536];
    for (;;) {
        if (!exited) {
            int st;
            pid_t r;
            while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
                if (r == pid) { exited = 1; status = st; exited_at = now_ms(); }
            }
        }
        if (exited && fd_out < 0 && fd_err < 0) break;
        int64_t t = now_ms();
        int wait_ms = -1;
        if (timeout_ms >= 0 && !exited) {
            int64_t left = start + timeout_ms - t;
            if (left <= 0) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                timed_out = 1;
                waitpid(pid, &status, 0);
                exited = 1;
                break;
            }
            wait_ms = (int)left;
        }
        if (exited) {
            int64_t left = exited_at + GRACE_MS - t;
            if (left <= 0) break; /* a background process holds the pipes: stop waiting */
            wait_ms = (int)left;
        }
        struct pollfd fds[4];
        int n = 0;
        fds[n].fd = sigchld_pipe[0]; fds[n++].events = POLLIN;
        int i_out = -1, i_err = -1, i_in = -1;
        if (fd_out >= 0) { i_out = n; fds[n].fd = fd_out; fds[n++].events = POLLIN; }
        if (fd_err >= 0) { i_err = n; fds[n].fd = fd_err; fds[n++].events = POLLIN; }
        if (fd_in >= 0) { i_in = n; fds[n].fd = fd_in; fds[n++].events = POLLOUT; }
        int pr = poll(fds, n, wait_ms);
        if (pr < 0) { if (errno == EINTR) continue; die("poll"); }
        if (fds[0].revents & POLLIN) { while (read(sigchld_pipe[0], buf, sizeof buf) > 0) {} }
        if (i_out >= 0 && fds[i_out].revents) {
            ssize_t r = read(fd_out, buf, sizeof buf);
            if (r > 0) send_frame('O', buf, r);
            else if (r == 0 || errno != EAGAIN) { close(fd_out); fd_out = -1; }
        }
        if (i_err >= 0 && fds[i_err].revents) {
            ssize_t r = read(fd_err, buf, sizeof buf);
            if (r > 0) send_frame('E', buf, r);
            else if (r == 0 || errno != EAGAIN) { close(fd_err); fd_err = -1; }
        }
        if (i_in >= 0 && fds[i_in].revents) {
            ssize_t w = write(fd_in, stdin_data + stdin_off, stdin_len - stdin_off);
            if (w > 0) stdin_off += w;
            if ((w < 0 && errno != EAGAIN) || stdin_off >= stdin_len) { close(fd_in); fd_in = -1; }
        }
    }
    if (fd_in >= 0) close(fd_in);
    if (fd_out >= 0) close(fd_out);
    if (fd_err >= 0) close(fd_err);

    int32_t code;
    if (timed_out) code = 124;
    else if (WIFEXITED(status)) code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) code = 128 + WTERMSIG(status);
    else code = 255;
    char tail[8];
    uint32_t flags = timed_out ? 1 : 0;
    memcpy(tail, &code, 4);
    memcpy(tail + 4, &flags, 4);
    send_frame('X', tail, 8);
}

static void serve(void) {
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK)) die("pipe");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    if (device) reopen_device();
    for (;;) {
        char head[5];
        if (read_full(head, 5) < 0) return; /* host closed the stream */
        uint32_t len;
        memcpy(&len, head + 1, 4);
        char *payload = malloc(len ? len : 1);
        if (len && read_full(payload, len) < 0) { errno = EPIPE; die("short frame"); }
        switch (head[0]) {
        case 'R': run_request(payload, len); break;
        case 'P': {
            struct utsname u;
            char text[300];
            uname(&u);
            int n = snprintf(text, sizeof text, "portability-agent 1 %s", u.release);
            send_frame('H', text, n);
            break;
        }
        case 'Q':
            free(payload);
            if (getpid() == 1) { sync(); reboot(RB_POWER_OFF); }
            return;
        default:
            errno = EPROTO;
            die("unknown frame type");
        }
        free(payload);
    }
}

static void idle_init(void) {
    /* PID 1 of a container: keep it alive, reap orphans, leave promptly on SIGTERM. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        int sig;
        sigwait(&set, &sig);
        if (sig == SIGCHLD) { while (waitpid(-1, NULL, WNOHANG) > 0) {} continue; }
        _exit(0);
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "init") == 0) idle_init();
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) {
        if (argc >= 3) device = argv[2];
        serve();
        return 0;
    }
    fprintf(stderr, "usage: %s serve [DEVICE] | init\n", argv[0]);
    return 2;
}

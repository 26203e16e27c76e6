/* sbx-park: a pooled container's parked pid 1 (see park.py).
 *
 * The fork server's Python forked this container's pid 1, made its namespaces, mounts,
 * root, limits, user, capabilities and working directory, reported "W" and exec'd this
 * program: what waits for the take is a small static process instead of a copy of the
 * fork server's interpreter (a few hundred KiB of PSS instead of megabytes).
 *
 *     sbx-park CHANNEL ERRW HOSTNAME HOME
 *
 * It waits on CHANNEL (a SOCK_SEQPACKET socket) for one take message, park.py's
 * encode_take(): a header of eight u32 (magic, terminal, argc, envc, seccomp flags,
 * filter length in bytes, the pty's rows and cols or 0), the seccomp filter
 * (struct sock_filter[]), then argc + envc NUL-terminated strings; with 3 stdio fds,
 * or 1 console socket when terminal. EOF instead: it was discarded, exit 0. Then what
 * the Python first process does last (child.install_stdio, child.environment,
 * child.find_executable, forkserver._exec):
 * stdio or a pty in the container's devpts, the environment, the executable found in
 * PATH, every fd but stdio closed, the filter loaded, "R" on ERRW, execve.
 *
 * Failures go to ERRW as "X" KIND ERRNO(4 bytes, native) TEXT, which the fork server
 * turns into the error the Python path would have sent (park.decode_failure):
 * KIND 'p' not found in PATH, 'n' exec ENOENT, 'x' exec failed, 's' a setup step
 * (TEXT names it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include "helper.h"

#define PARK_MAGIC 0x6b726170u         /* "park" */
#define MAX_MESSAGE (1 << 17)           /* park.MAX_TAKE */
#define MAX_STRINGS 8192

static char message[MAX_MESSAGE] __attribute__((aligned(8)));
static char *args[MAX_STRINGS + 1];
static char *env[MAX_STRINGS + 5];

static void fail_step(const char *step) { report_failure('s', errno, step, 1); }

static size_t key_length(const char *entry)
{
    const char *eq = strchr(entry, '=');
    return eq ? (size_t)(eq - entry) : strlen(entry);
}

/* child.environment(): the defaults, then each entry (a later one replaces its key). */
static void set_env(int *count, char *entry)
{
    size_t key = key_length(entry);
    for (int i = 0; i < *count; i++) {
        if (key_length(env[i]) == key && strncmp(env[i], entry, key) == 0) {
            env[i] = entry;
            return;
        }
    }
    env[(*count)++] = entry;
}

static const char *lookup(const char *name)
{
    for (int i = 0; env[i]; i++)
        if (strncmp(env[i], name, strlen(name)) == 0 && env[i][strlen(name)] == '=')
            return env[i] + strlen(name) + 1;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    int channel = atoi(argv[1]);
    begin(argv[2]);
    fcntl(channel, F_SETFD, FD_CLOEXEC);

    struct iovec iov = {message, sizeof message};
    union { struct cmsghdr h; char space[CMSG_SPACE(3 * sizeof(int))]; } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n;
    do
        n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        _exit(0);                       /* the fork server let it go */
    if (n < 0)
        fail_step("receive the take");
    close(channel);

    int fds[3] = {-1, -1, -1}, nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(c), (size_t)(nfds > 3 ? 3 : nfds) * sizeof(int));
        }
    }
    uint32_t head[8];
    errno = EINVAL;
    if ((size_t)n < sizeof head || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        fail_step("decode the take");
    memcpy(head, message, sizeof head);
    uint32_t terminal = head[1], nargs = head[2], nenv = head[3], flags = head[4],
             filter_len = head[5];
    if (head[0] != PARK_MAGIC || nargs < 1 || nargs > MAX_STRINGS || nenv > MAX_STRINGS ||
            filter_len % sizeof(struct sock_filter) ||
            filter_len > (size_t)n - sizeof head || nfds != (terminal ? 1 : 3))
        fail_step("decode the take");
    char *filter = message + sizeof head;
    char *strings = filter + filter_len, *p = strings, *end = message + n;
    for (uint32_t i = 0; i < nargs + nenv; i++) {     /* each string ends in the message */
        char *nul = memchr(p, 0, (size_t)(end - p));
        if (!nul)
            fail_step("decode the take");
        if (i < nargs)
            args[i] = p;
        p = nul + 1;
    }

    install_stdio((int)terminal, fds, head[6], head[7]);

    static char hostname[300], home[4200];
    snprintf(hostname, sizeof hostname, "HOSTNAME=%s", argv[3]);
    snprintf(home, sizeof home, "HOME=%s", argv[4]);
    int count = 0;
    env[count++] = "PATH=" DEFAULT_PATH;
    env[count++] = hostname;
    env[count++] = home;
    if (terminal)
        env[count++] = "TERM=xterm";
    p = strings;
    for (uint32_t i = 0; i < nargs + nenv; i++) {
        if (i >= nargs)
            set_env(&count, p);
        p += strlen(p) + 1;
    }
    env[count] = NULL;
    const char *path = lookup("PATH");
    const char *executable = find_executable(args[0], path ? path : DEFAULT_PATH);

    close_all_but_stdio_and_errw();
    if (filter_len) {
        struct sock_fprog prog = {(unsigned short)(filter_len / sizeof(struct sock_filter)),
                                  (struct sock_filter *)filter};
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog) < 0)
            fail_step("seccomp");
    }
    if (write(errw, "R", 1) != 1)
        _exit(1);
    execve(executable, args, env);
    report_failure(errno == ENOENT || errno == ENOTDIR ? 'n' : 'x', errno, executable,
                   errno == ENOENT || errno == ENOTDIR ? 127 : 126);
    return 1;
}

/* What sbx-park (park.c) and sbx-setup (setup.c) share: their failure reports to the
 * fork server, stdio or a pty, the PATH lookup and the closing of fds before the exec. Included by
 * both (park.helper_path hashes it with each source). */
#include <errno.h>
#include <fcntl.h>
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

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static int errw = -1;                   /* the report pipe to the fork server */

/* Each program's start: the report pipe from its argument, not inherited by what it
 * execs; the process not dumpable until its exec, as the Python first process. */
static void begin(const char *errw_arg)
{
    errw = atoi(errw_arg);
    prctl(PR_SET_DUMPABLE, 0);
    fcntl(errw, F_SETFD, FD_CLOEXEC);
}

/* "X" KIND ERRNO(4 bytes, native), then EXTRA (EXTRA_LEN bytes), then TEXT; exit CODE. */
static void report_failure_with(char kind, int err, const void *extra, size_t extra_len,
                                const char *text, int code)
{
    char buf[4200];
    size_t len = strnlen(text, 4096);
    buf[0] = 'X';
    buf[1] = kind;
    memcpy(buf + 2, &err, 4);
    memcpy(buf + 6, extra, extra_len);
    memcpy(buf + 6 + extra_len, text, len);
    if (write(errw, buf, 6 + extra_len + len) < 0) {
        /* nothing left to tell it with: the exit status says it failed */
    }
    _exit(code);
}

/* park.decode_failure's kinds: 'p' not found in PATH, 'n' exec ENOENT, 'x' exec failed,
 * 's' a setup step (TEXT names it). */
static void report_failure(char kind, int err, const char *text, int code)
{
    report_failure_with(kind, err, NULL, 0, text, code);
}

/* child.find_executable(): a name with a slash as it is, else the first regular file of
 * that name in PATH (an empty entry is the working directory). */
static const char *find_executable(const char *name, const char *path)
{
    static char found[4096];
    if (strchr(name, '/'))
        return name;
    for (;;) {
        const char *end = strchrnul(path, ':');
        size_t dir = (size_t)(end - path);
        int n = dir == 0 ? snprintf(found, sizeof found, "./%s", name)
                : path[dir - 1] == '/' ? snprintf(found, sizeof found, "%.*s%s", (int)dir, path, name)
                : snprintf(found, sizeof found, "%.*s/%s", (int)dir, path, name);
        struct stat st;
        if (n > 0 && (size_t)n < sizeof found && stat(found, &st) == 0 && S_ISREG(st.st_mode))
            return found;
        if (!*end)
            break;
        path = end + 1;
    }
    report_failure('p', 0, name, 127);
    return NULL;
}

/* child.install_stdio(): a pty made in the container's own devpts, sized rows x cols
 * when both are given, its master sent back over the console socket; or the three fds. */
static void install_stdio(int terminal, const int *fds, uint32_t rows, uint32_t cols)
{
    if (setsid() < 0)
        report_failure('s', errno, "setsid", 1);
    if (!terminal) {
        for (int i = 0; i < 3; i++)
            if (dup2(fds[i], i) < 0)
                report_failure('s', errno, "stdio", 1);
        return;
    }
    int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    int unlock = 0;
    unsigned number;
    if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
            ioctl(master, TIOCGPTN, &number) < 0)
        report_failure('s', errno, "pty", 1);
    char slave_path[32];
    snprintf(slave_path, sizeof slave_path, "/dev/pts/%u", number);
    int slave = open(slave_path, O_RDWR | O_NOCTTY);
    if (slave < 0)
        report_failure('s', errno, "pty", 1);
    struct winsize size = {(unsigned short)rows, (unsigned short)cols, 0, 0};
    if (rows && cols && ioctl(slave, TIOCSWINSZ, &size) < 0)
        report_failure('s', errno, "pty", 1);
    char tag[] = "pty";
    struct iovec iov = {tag, 3};
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &master, sizeof(int));
    if (sendmsg(fds[0], &msg, MSG_NOSIGNAL) < 0)
        report_failure('s', errno, "pty", 1);
    close(fds[0]);
    close(master);
    for (int i = 0; i < 3; i++)
        if (dup2(slave, i) < 0)
            report_failure('s', errno, "pty", 1);
    if (slave > 2)
        close(slave);
    if (ioctl(0, TIOCSCTTY, 0) < 0)
        report_failure('s', errno, "pty", 1);
}

static void close_from(unsigned first, unsigned last)
{
    if (first > last)
        return;
    if (syscall(SYS_close_range, first, last, 0) == 0)
        return;
    for (unsigned fd = first; fd <= last && fd < 65536; fd++)   /* before Linux 5.9 */
        close((int)fd);
}

/* Every fd but stdio and the report pipe, before the exec. */
static void close_all_but_stdio_and_errw(void)
{
    close_from(3, (unsigned)errw - 1);
    close_from((unsigned)errw + 1, ~0u);
}

/* sbx-setup: a cold container start's set-up, carried out in C (see native.py).
 *
 * The fork server's Python decides everything a start does (plan.build_plan, the spec's
 * limits, profile and process) and encodes it as a list of steps (native.encode). It
 * spawns this program (posix_spawn: no copy of its address space) with the encoded
 * steps in a memfd:
 *
 *     sbx-setup PLAN_FD ERRW
 *
 * The process spawned is a "C1": it joins the container's cgroup, clones the container's
 * pid 1 (new pid and mount namespaces), reports "P" PID(4 bytes, native) on ERRW and
 * exits; the fork server, a child subreaper, inherits pid 1. pid 1 then goes through the
 * remaining steps in order (namespaces, sysctls, the plan's filesystem steps, stdio,
 * rlimits, working directory, capabilities, no_new_privs), builds the environment, finds
 * the executable, closes every fd but ERRW, loads the seccomp filter, reports "R" and
 * execs: what forkserver._container_first and _container_pid1 do in Python, with no
 * Python in the container's process and no copy-on-write faults on the server's heap.
 * A prepared (pool) container's pid 1 ends instead as forkserver._park does: "W", then
 * sbx-park waits for its take. An exec into a running container (forkserver._exec_c1)
 * has a C1 that joins the cgroup and the container's namespaces and forks the process,
 * which sets itself up from stdio on.
 *
 * Failures go to ERRW as "X" KIND ERRNO(4) then, for a step's kinds (fail_kind:
 * native.STEP_KINDS), the step's index (u32) and a detail text: 'o' (it failed), 'l' (a
 * plain target is a symlink), 'd' (it is not a directory), 'L' (too many symlinks),
 * 'u', 'g', 'a' (no such user, group, --group-add group) and 'U' (an id in the image's
 * file is not a number); for helper.h's (report_failure, park.c's too: 'p' not in PATH,
 * 'n' exec ENOENT, 'x' exec failed, 's' stdio, a pty or the filter at park) a text. The
 * fork server words them as the Python path does (native.decode_failure).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "helper.h"

#define SETUP_MAGIC 0x70757473u         /* "stup": native.MAGIC */
#define MAX_LINKS 40
#define KEEP_ON_REMOUNT (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME)
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

/* The step codes: native.py's Op. */
enum {
    OP_JOIN = 1, OP_CLONE, OP_UNSHARE, OP_SETNS, OP_SYSCTL, OP_MOUNT, OP_ATTACH, OP_MKDIRS,
    OP_MKNOD, OP_SYMLINK, OP_WRITE, OP_MASK, OP_READONLY, OP_PIVOT, OP_HOSTNAME, OP_STDIO,
    OP_RLIMIT, OP_WORKDIR, OP_PROFILE, OP_CHDIR, OP_EXEC, OP_PARK, OP_ENTER, OP_FORK,
};

#define MAX_ENTER 8

/* The C1's end: name the process it made ("P" PID) to the fork server, then go. */
static void report_child(long pid)
{
    char buf[5] = {'P'};
    int32_t p = (int32_t)pid;
    memcpy(buf + 1, &p, 4);
    _exit(write(errw, buf, sizeof buf) == sizeof buf ? 0 : 1);
}

static const char *plan;            /* the encoded steps: the memfd, mapped */
static size_t plan_len, cursor;
/* No step yet: a failure before the first (the plan's memfd, its magic) is sbx-setup's
 * own, not the first step's (native.decode_failure names an unknown index so). */
static uint32_t step_index = UINT32_MAX;
static char root[4096];             /* the new root's host path (resolve_in_root's root) */

/* 'o', 'l', 'd', 'L': the step at step_index failed; DETAIL says more where the kind
 * needs it (native.decode_failure). */
static void fail_kind(char kind, int err, const char *detail)
{
    report_failure_with(kind, err, &step_index, sizeof step_index, detail, 1);
}

static void fail(void) { fail_kind('o', errno, ""); }

/* -- the plan's encoding: u32 and u64 native, strings as u32 length (with the NUL) + bytes */
static void truncated(void)
{
    errno = EINVAL;
    fail_kind('o', EINVAL, "the encoded plan is truncated");
}

static void next_value(void *value, size_t size)
{
    if (plan_len - cursor < size)
        truncated();
    memcpy(value, plan + cursor, size);
    cursor += size;
}

static uint32_t u32(void)
{
    uint32_t v;
    next_value(&v, sizeof v);
    return v;
}

static uint64_t u64(void)
{
    uint64_t v;
    next_value(&v, sizeof v);
    return v;
}

static const char *bytes(uint32_t *size)
{
    uint32_t n = u32();
    if (plan_len - cursor < n)
        truncated();
    const char *p = plan + cursor;
    cursor += n;
    if (size)
        *size = n;
    return p;
}

static const char *str(void)
{
    uint32_t n;
    const char *p = bytes(&n);
    if (n == 0 || p[n - 1] != '\0')
        truncated();
    return p;
}

/* -- paths */

/* mounts.resolve_in_root: the host path of PATH as seen from inside the root, symlinks
 * followed with the root as their "/", ".." never above it; missing components are
 * fine (the result names where they would be). */
static void resolve_in_root(const char *path, char *out, size_t size)
{
    /* parts still to walk, as a string; done, the resolved components */
    static char todo[8192], link[4096], next[8192];
    char done[4096] = "";
    size_t done_len = 0;
    int hops = 0;
    if (snprintf(todo, sizeof todo, "%s", path) >= (int)sizeof todo)
        fail_kind('o', ENAMETOOLONG, "");
    char *p = todo;
    for (;;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        char *end = strchrnul(p, '/');
        size_t len = (size_t)(end - p);
        char *rest = *end ? end + 1 : end;
        if (len == 1 && p[0] == '.') {
            p = rest;
            continue;
        }
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            char *slash = strrchr(done, '/');
            done_len = slash ? (size_t)(slash - done) : 0;
            done[done_len] = '\0';
            p = rest;
            continue;
        }
        char candidate[8192];
        int n = snprintf(candidate, sizeof candidate, "%s%s/%.*s", root, done, (int)len, p);
        if (n < 0 || (size_t)n >= sizeof candidate || done_len + len + 2 > sizeof done)
            fail_kind('o', ENAMETOOLONG, "");
        struct stat st;
        if (lstat(candidate, &st) < 0) {
            if (errno != ENOENT)
                fail();
        } else if (S_ISLNK(st.st_mode)) {
            if (++hops > MAX_LINKS)
                fail_kind('L', ELOOP, path);
            ssize_t k = readlink(candidate, link, sizeof link - 1);
            if (k < 0)
                fail();
            link[k] = '\0';
            if (link[0] == '/') {
                done_len = 0;
                done[0] = '\0';
            }
            if (snprintf(next, sizeof next, "%s/%s", link, rest) >= (int)sizeof next)
                fail_kind('o', ENAMETOOLONG, "");
            memcpy(todo, next, strlen(next) + 1);
            p = todo;
            continue;
        }
        done[done_len++] = '/';
        memcpy(done + done_len, p, len);
        done_len += len;
        done[done_len] = '\0';
        p = rest;
    }
    if ((size_t)snprintf(out, size, "%s%s", root, done) >= size)
        fail_kind('o', ENAMETOOLONG, "");
}

static void where(const char *path, int in_root, char *out, size_t size)
{
    if (in_root)
        resolve_in_root(path, out, size);
    else if ((size_t)snprintf(out, size, "%s", path) >= size)
        fail_kind('o', ENAMETOOLONG, "");
}

static void in_new_root(const char *path, char *out, size_t size)
{
    if ((size_t)snprintf(out, size, "%s%s", root, path) >= size)
        fail_kind('o', ENAMETOOLONG, "");
}

/* os.makedirs(path, mode, exist_ok=True): parents 0777, the leaf MODE (both under the
 * umask); an existing non-directory at the end fails with EEXIST. */
static int makedirs(const char *path, mode_t mode)
{
    char buf[8192];
    size_t len = strlen(path);
    if (len >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    while (len > 1 && buf[len - 1] == '/')
        buf[--len] = '\0';
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(buf, 0777) < 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (mkdir(buf, mode) == 0)
        return 0;
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    errno = err;                /* mkdir's, not stat's: a dangling symlink is EEXIST */
    return -1;
}

static int lexists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static unsigned long keep_flags(const char *target)
{
    struct statvfs sv;
    if (statvfs(target, &sv) < 0)
        fail();
    return sv.f_flag & KEEP_ON_REMOUNT;
}

/* -- the plan's filesystem steps (mounts.py) */

static void op_mount(void)
{
    const char *target = str(), *fstype = str(), *source = str(), *data = str(),
               *create = str(), *chdir_to = str();
    unsigned long flags = (unsigned long)u64();
    uint32_t in_root = u32(), plain = u32();
    char path[8192];
    if (plain) {
        in_new_root(target, path, sizeof path);
        struct stat st;
        if (lstat(path, &st) < 0) {
            if (errno != ENOENT || makedirs(path, 0755) < 0)
                fail();
        } else if (S_ISLNK(st.st_mode)) {
            char link[4096];
            ssize_t k = readlink(path, link, sizeof link - 1);
            link[k < 0 ? 0 : k] = '\0';
            fail_kind('l', ELOOP, link);
        } else if (!S_ISDIR(st.st_mode)) {
            fail_kind('d', ENOTDIR, "");
        }
    } else {
        where(target, (int)in_root, path, sizeof path);
        if (*create && !lexists(path)) {
            struct stat st;
            int as_file = strcmp(create, "like-source") == 0 && *source &&
                          !(stat(source, &st) == 0 && S_ISDIR(st.st_mode));
            if (as_file) {
                char parent[8192];
                memcpy(parent, path, strlen(path) + 1);
                char *slash = strrchr(parent, '/');
                if (slash && slash != parent) {
                    *slash = '\0';
                    if (makedirs(parent, 0755) < 0)
                        fail();
                }
                int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (fd < 0)
                    fail();
                close(fd);
            } else if (makedirs(path, 0755) < 0) {
                fail();
            }
        }
    }
    if (flags & MS_REMOUNT)
        flags |= keep_flags(path);
    int cwd = -1;
    if (*chdir_to) {
        cwd = open(".", O_PATH | O_CLOEXEC);
        if (cwd < 0 || chdir(chdir_to) < 0)
            fail();
    }
    int rc = mount(*source ? source : NULL, path, *fstype ? fstype : NULL, flags,
                   *data ? data : NULL);
    int err = errno;
    if (cwd >= 0) {
        if (fchdir(cwd) < 0)
            fail();
        close(cwd);
    }
    errno = err;
    if (rc < 0)
        fail();
}

static void op_attach(void)
{
    int fd = (int)u32();
    const char *target = str();
    uint32_t in_root = u32();
    char path[8192];
    where(target, (int)in_root, path, sizeof path);
    if (in_root && makedirs(path, 0755) < 0)
        fail();
    if (syscall(SYS_move_mount, fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        fail();
    close(fd);
}

static void op_mkdirs(void)
{
    const char *target = str();
    mode_t mode = (mode_t)u32();
    uint32_t in_root = u32();
    char path[8192];
    where(target, (int)in_root, path, sizeof path);
    if (makedirs(path, mode) < 0)
        fail();
}

static void op_mknod(void)
{
    const char *target = str();
    unsigned major = u32(), minor = u32();
    char path[8192];
    in_new_root(target, path, sizeof path);
    if (mknod(path, S_IFCHR | 0666, makedev(major, minor)) < 0 || chmod(path, 0666) < 0)
        fail();
}

static void op_symlink(void)
{
    const char *target = str(), *link = str();
    char path[8192];
    in_new_root(target, path, sizeof path);
    if (symlink(link, path) < 0)
        fail();
}

/* mounts.write_in_root: resolved inside the root in one openat2 call. */
static int open_in_root(int root_fd, const char *path)
{
    struct open_how how = {.flags = O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC,
                           .mode = 0644, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    while (*path == '/')
        path++;
    int fd;
    int tries = 0;
    do
        fd = (int)syscall(SYS_openat2, root_fd, path, &how, sizeof how);
    while (fd < 0 && errno == EAGAIN && ++tries < 32);
    return fd;
}

static void op_write(void)
{
    const char *target = str();
    uint32_t size;
    const char *content = bytes(&size);
    int root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        fail();
    int fd = open_in_root(root_fd, target);
    if (fd < 0 && errno == ENOENT) {          /* a directory on the way is missing (rare) */
        char path[8192];
        resolve_in_root(target, path, sizeof path);
        char *slash = strrchr(path, '/');
        if (slash && slash != path) {
            *slash = '\0';
            if (makedirs(path, 0755) < 0)
                fail();
        }
        fd = open_in_root(root_fd, target);
    }
    if (fd < 0)
        fail();
    struct stat st;
    if (fstat(fd, &st) < 0)
        fail();
    if (!S_ISREG(st.st_mode)) {               /* write_in_root's words */
        char detail[4200];
        snprintf(detail, sizeof detail, "%s is not a regular file", target);
        fail_kind('o', EINVAL, detail);
    }
    for (uint32_t done = 0; done < size;) {
        ssize_t n = write(fd, content + done, size - done);
        if (n < 0)
            fail();
        done += (uint32_t)n;
    }
    close(fd);
    close(root_fd);
}

static void op_mask(void)
{
    const char *target = str();
    char path[8192], null[8192];
    resolve_in_root(target, path, sizeof path);
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return;                              /* nothing there to hide */
        fail();
    }
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=0,mode=555");
    } else {
        in_new_root("/dev/null", null, sizeof null);
        rc = mount(null, path, NULL, MS_BIND, NULL);
    }
    if (rc < 0)
        fail();
}

static void op_readonly(void)
{
    const char *target = str();
    char path[8192];
    resolve_in_root(target, path, sizeof path);
    if (!lexists(path))
        return;
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0)
        fail();
    if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep_flags(path), NULL) < 0)
        fail();
}

static void op_pivot(void)
{
    /* pivot_root(".", "."): the old root ends up stacked under the new one; detaching
     * "." then removes it, so nothing of the host's tree stays reachable. */
    if (chdir(root) < 0 || syscall(SYS_pivot_root, ".", ".") < 0 ||
            umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        fail();
}

/* -- the process (child.py, security.py) */

/* -- users and groups: security.resolve_user and add_groups, child.home_of */

#define MAX_FIELDS 16

/* One line of a passwd or group file, split at ':' (the fields NUL-terminated in place). */
struct entry {
    char *field[MAX_FIELDS];
    int count;
};

/* The whole of PATH (NULL: unreadable, as Python's OSError: no entries), its lines split
 * as Python's text mode does (universal newlines: \n, \r\n and \r end a line). */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    size_t size = 0, cap = 4096;
    char *text = malloc(cap);
    size_t n;
    if (!text)                  /* not "no file": Python's MemoryError stops the start */
        fail_kind('o', ENOMEM, "");
    while ((n = fread(text + size, 1, cap - size - 1, f)) > 0) {
        size += n;
        if (cap - size < 2 && !(text = realloc(text, cap *= 2)))
            fail_kind('o', ENOMEM, "");
    }
    fclose(f);
    /* A NUL byte is one more character to Python, in a field no name or number can
     * match: so it is here, not the end of the text (the entries after it count). */
    for (size_t i = 0; i < size; i++)
        if (!text[i])
            text[i] = '\x01';
    text[size] = '\0';
    return text;
}

/* The next line of *CURSOR as an entry; FILTER: security._read_db's (no blank line, no
 * comment, at least two ':'), else every line (child.home_of's). 0 at the end. */
static int next_entry(char **cursor, struct entry *e, int filter)
{
    while (*cursor && **cursor) {
        char *line = *cursor, *end = line + strcspn(line, "\r\n");
        *cursor = *end == '\r' && end[1] == '\n' ? end + 2 : *end ? end + 1 : end;
        *end = '\0';
        int colons = 0, blank = 1;
        for (char *c = line; *c; c++) {
            colons += *c == ':';
            blank &= *c == ' ' || *c == '\t' || *c == '\v' || *c == '\f';
        }
        if (filter && (blank || line[0] == '#' || colons < 2))
            continue;
        e->count = 0;
        for (char *f = line; e->count < MAX_FIELDS; ) {
            e->field[e->count++] = f;
            char *colon = strchr(f, ':');
            if (!colon)
                break;
            *colon = '\0';
            f = colon + 1;
        }
        return 1;
    }
    return 0;
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* Digits as a uid or gid the kernel takes (leading zeros too, as Python's int()): 0 if
 * they are not one. */
static int parse_id(const char *s, unsigned *id)
{
    if (!all_digits(s))
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE || v > 0xFFFFFFFEull)
        return 0;
    *id = (unsigned)v;
    return 1;
}

/* A numeric field; what Python's int() would refuse or could not pass to the kernel
 * ends the start ('U': the file has an entry sandboxd cannot read). */
static unsigned id_of(const struct entry *e, int i, const char *file)
{
    unsigned id;
    if (i >= e->count || !parse_id(e->field[i], &id))
        fail_kind('U', EINVAL, file);
    return id;
}

/* A uid or gid given as digits (--user, --group-add) that no kernel id can be. */
static unsigned flag_id(const char *s)
{
    unsigned id;
    if (!parse_id(s, &id))
        fail_kind('o', ERANGE, "");
    return id;
}

static int has_gid(const gid_t *gids, int count, gid_t gid)
{
    for (int i = 0; i < count; i++)
        if (gids[i] == gid)
            return 1;
    return 0;
}

/* A copy of /etc/group's TEXT (read once) for one walk, since next_entry splits what it
 * walks in place; NULL for no file. The caller frees it after the walk. */
static char *walk_copy(const char *text)
{
    if (!text)
        return NULL;
    char *copy = strdup(text);
    if (!copy)
        fail_kind('o', ENOMEM, "");
    return copy;
}

#define MAX_GROUPS 65536

/* security.resolve_user (USER "" is root with no groups) and add_groups (ADDED: the
 * --group-add names, gids or group names); 'u', 'g', 'a' name what is missing. */
static void resolve_user(char *user, const char **added, uint32_t n_added, uid_t *uid,
                         gid_t *gid, gid_t *groups, int *n_groups)
{
    *uid = 0;
    *gid = 0;
    *n_groups = 0;
    char *group_text = NULL, *cursor;
    struct entry e;
    if (*user) {
        char *grp = strchr(user, ':');
        if (grp)
            *grp++ = '\0';
        char *passwd = read_text("/etc/passwd"), *user_name = NULL;
        static struct entry found;
        int have = 0;
        for (cursor = passwd; next_entry(&cursor, &e, 1); ) {
            if (all_digits(user) ? strcmp(e.field[2], user) == 0 : strcmp(e.field[0], user) == 0) {
                found = e;
                have = 1;
                break;
            }
        }
        if (all_digits(user)) {
            *uid = flag_id(user);
            *gid = have ? id_of(&found, 3, "/etc/passwd") : *uid;
        } else {
            if (!have)
                fail_kind('u', 0, user);
            *uid = id_of(&found, 2, "/etc/passwd");
            *gid = id_of(&found, 3, "/etc/passwd");
        }
        user_name = have ? found.field[0] : NULL;
        group_text = read_text("/etc/group");
        if (grp && *grp) {
            if (all_digits(grp)) {
                *gid = flag_id(grp);
            } else {
                char *copy = walk_copy(group_text);
                int got = 0;
                for (cursor = copy; next_entry(&cursor, &e, 1); )
                    if (strcmp(e.field[0], grp) == 0) {
                        *gid = id_of(&e, 2, "/etc/group");
                        got = 1;
                        break;
                    }
                free(copy);
                if (!got)
                    fail_kind('g', 0, grp);
            }
        }
        /* the groups that list the user by name, but its own */
        if (user_name && group_text) {
            char *copy = walk_copy(group_text);
            for (cursor = copy; next_entry(&cursor, &e, 1); ) {
                if (e.count <= 3 || !all_digits(e.field[2]))
                    continue;
                for (char *member = e.field[3], *next; member; member = next) {
                    next = strchr(member, ',');
                    size_t len = next ? (size_t)(next++ - member) : strlen(member);
                    if (len == strlen(user_name) && strncmp(member, user_name, len) == 0) {
                        gid_t g = id_of(&e, 2, "/etc/group");
                        if (g != *gid && !has_gid(groups, *n_groups, g) && *n_groups < MAX_GROUPS)
                            groups[(*n_groups)++] = g;
                        break;
                    }
                }
            }
            free(copy);
            for (int i = 1; i < *n_groups; i++)          /* sorted, as Python's sorted() */
                for (int j = i; j > 0 && groups[j - 1] > groups[j]; j--) {
                    gid_t t = groups[j];
                    groups[j] = groups[j - 1];
                    groups[j - 1] = t;
                }
        }
    }
    for (uint32_t i = 0; i < n_added; i++) {
        gid_t g = 0;
        if (all_digits(added[i])) {
            g = flag_id(added[i]);
        } else {
            if (!group_text)
                group_text = read_text("/etc/group");
            char *copy = walk_copy(group_text);
            int got = 0;
            for (cursor = copy; next_entry(&cursor, &e, 1); )
                if (strcmp(e.field[0], added[i]) == 0 && all_digits(e.field[2])) {
                    g = id_of(&e, 2, "/etc/group");
                    got = 1;
                    break;
                }
            free(copy);
            if (!got)
                fail_kind('a', 0, added[i]);
        }
        if (!has_gid(groups, *n_groups, g) && *n_groups < MAX_GROUPS)
            groups[(*n_groups)++] = g;
    }
}

/* security.apply_profile: the bounding set cut to KEEP, the user's groups, gid and uid
 * (a non-root uid loses every capability), the remaining sets exactly KEEP for root,
 * ambient cleared, no_new_privs. */
static void op_profile(void)
{
    uint64_t keep = u64();
    uint32_t last_cap = u32(), no_new_privs = u32();
    char *user = strdup(str());
    uint32_t n_added = u32();
    const char **added = calloc(n_added + 1, sizeof *added);
    static gid_t groups[MAX_GROUPS];
    if (!user || !added || n_added > plan_len)
        truncated();
    for (uint32_t i = 0; i < n_added; i++)
        added[i] = str();
    uid_t uid;
    gid_t gid;
    int n_groups;
    resolve_user(user, added, n_added, &uid, &gid, groups, &n_groups);
    for (uint32_t cap = 0; cap <= last_cap; cap++)
        if (!(keep & (1ull << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            fail();
    if (setgroups((size_t)n_groups, groups) < 0 || setresgid(gid, gid, gid) < 0 ||
            setresuid(uid, uid, uid) < 0)
        fail();
    if (uid == 0) {
        struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2] = {
            {(uint32_t)keep, (uint32_t)keep, 0},
            {(uint32_t)(keep >> 32), (uint32_t)(keep >> 32), 0}};
        if (syscall(SYS_capset, &header, data) < 0)
            fail();
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        fail();
    if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail();
}

/* child.home_of(getuid()): the home of this uid in the container's /etc/passwd (every
 * line read, as Python's loop does), else /root for root and / for anyone else. */
static void home_of(char *out, size_t size)
{
    uid_t uid = getuid();
    char wanted[16];
    snprintf(wanted, sizeof wanted, "%u", (unsigned)uid);
    snprintf(out, size, "%s", uid == 0 ? "/root" : "/");
    char *text = read_text("/etc/passwd"), *cursor = text;
    struct entry e;
    while (next_entry(&cursor, &e, 0))
        if (e.count > 5 && strcmp(e.field[2], wanted) == 0) {
            snprintf(out, size, "%s", *e.field[5] ? e.field[5] : "/");
            break;
        }
    free(text);
}

static void op_exec(void)
{
    char **args, **env;
    static char host_entry[300], home_entry[4200];
    uint32_t argc = u32(), envc = u32(), host_at = u32(), home_at = u32();
    const char *path = str();
    uint32_t flags = u32(), filter_len;
    const char *filter = bytes(&filter_len);
    if (argc < 1 || argc > plan_len || envc > plan_len ||
            filter_len % sizeof(struct sock_filter))
        truncated();
    args = calloc(argc + 1, sizeof *args);
    env = calloc(envc + 1, sizeof *env);
    if (!args || !env)
        fail();
    for (uint32_t i = 0; i < argc; i++)
        args[i] = (char *)str();
    for (uint32_t i = 0; i < envc; i++)
        env[i] = (char *)str();
    if (host_at < envc) {                      /* HOSTNAME: the uts namespace's own */
        struct utsname u;
        uname(&u);
        snprintf(host_entry, sizeof host_entry, "HOSTNAME=%s", u.nodename);
        env[host_at] = host_entry;
    }
    if (home_at < envc) {
        char home[4096];
        home_of(home, sizeof home);
        snprintf(home_entry, sizeof home_entry, "HOME=%s", home);
        env[home_at] = home_entry;
    }
    const char *executable = find_executable(args[0], path);
    close_all_but_stdio_and_errw();
    if (filter_len) {
        struct sock_fprog prog = {(unsigned short)(filter_len / sizeof(struct sock_filter)),
                                  (struct sock_filter *)filter};
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog) < 0)
            fail();
    }
    if (write(errw, "R", 1) != 1)
        _exit(1);
    execve(executable, args, env);
    int err = errno;
    report_failure(err == ENOENT || err == ENOTDIR ? 'n' : 'x', err, executable,
                 err == ENOENT || err == ENOTDIR ? 127 : 126);
}

/* forkserver._park's end: a prepared container's pid 1 waits for its take in sbx-park
 * (park.c), exec'd from the fork server's memfd HELPER with CHANNEL and ERRW. */
static void op_park(void)
{
    int channel = (int)u32(), helper = (int)u32();
    const char *hostname = str();
    uint32_t flags = u32(), filter_len;
    const char *filter = bytes(&filter_len);
    if (filter_len % sizeof(struct sock_filter))
        truncated();
    static char host[300], home[4096], channel_arg[16], errw_arg[16];
    if (*hostname) {
        snprintf(host, sizeof host, "%s", hostname);
    } else {
        struct utsname u;
        uname(&u);
        snprintf(host, sizeof host, "%s", u.nodename);
    }
    home_of(home, sizeof home);
    int keep[3] = {errw, channel, helper};      /* close every other fd */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (keep[j] < keep[i]) {
                int t = keep[i];
                keep[i] = keep[j];
                keep[j] = t;
            }
    unsigned first = 3;
    for (int i = 0; i < 3; i++) {
        if (keep[i] >= (int)first)
            close_from(first, (unsigned)keep[i] - 1);
        if (keep[i] + 1 > (int)first)
            first = (unsigned)keep[i] + 1;
    }
    close_from(first, ~0u);
    if (filter_len) {                          /* forkserver._filter_at_park */
        struct sock_fprog prog = {(unsigned short)(filter_len / sizeof(struct sock_filter)),
                                  (struct sock_filter *)filter};
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog) < 0)
            report_failure('s', errno, "seccomp", 1);
    }
    if (write(errw, "W", 1) != 1)
        _exit(1);
    fcntl(errw, F_SETFD, 0);
    fcntl(channel, F_SETFD, 0);
    snprintf(channel_arg, sizeof channel_arg, "%d", channel);
    snprintf(errw_arg, sizeof errw_arg, "%d", errw);
    char *argv[] = {"sbx-park", channel_arg, errw_arg, host, home, NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, helper, "", argv, envp, AT_EMPTY_PATH);
    fail();
}

static void write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, value, strlen(value)) < 0)
        fail();
    close(fd);
}

static void run(void)
{
    while (cursor < plan_len) {
        uint32_t op = u32();
        step_index = u32();
        switch (op) {
        case OP_JOIN:
            write_file(str(), "0");
            break;
        case OP_CLONE: {
            long pid = syscall(SYS_clone, (unsigned long)u64() | SIGCHLD, 0, 0, 0, 0);
            if (pid < 0)
                fail();
            if (pid > 0)                       /* the C1: name pid 1, then go */
                report_child(pid);
            break;
        }
        case OP_ENTER: {                       /* an exec's: all opened, then joined */
            uint32_t count = u32();
            int fds[MAX_ENTER];
            if (count > MAX_ENTER)
                truncated();
            for (uint32_t i = 0; i < count; i++)
                if ((fds[i] = open(str(), O_RDONLY | O_CLOEXEC)) < 0)
                    fail();
            for (uint32_t i = 0; i < count; i++) {
                if (setns(fds[i], 0) < 0)
                    fail();
                close(fds[i]);
            }
            break;
        }
        case OP_FORK: {                        /* setns(CLONE_NEWPID) moves children only */
            pid_t pid = fork();
            if (pid < 0)
                fail();
            if (pid > 0)
                report_child(pid);
            break;
        }
        case OP_UNSHARE:
            if (unshare((int)u64()) < 0)
                fail();
            break;
        case OP_SETNS: {
            const char *path = str();
            int type = (int)u32();
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || setns(fd, type) < 0)
                fail();
            close(fd);
            break;
        }
        case OP_SYSCTL: {
            const char *path = str(), *value = str();
            write_file(path, value);
            break;
        }
        case OP_MOUNT: op_mount(); break;
        case OP_ATTACH: op_attach(); break;
        case OP_MKDIRS: op_mkdirs(); break;
        case OP_MKNOD: op_mknod(); break;
        case OP_SYMLINK: op_symlink(); break;
        case OP_WRITE: op_write(); break;
        case OP_MASK: op_mask(); break;
        case OP_READONLY: op_readonly(); break;
        case OP_PIVOT: op_pivot(); break;
        case OP_HOSTNAME: {
            const char *name = str();
            if (sethostname(name, strlen(name)) < 0)
                fail();
            break;
        }
        case OP_STDIO: {                       /* 3 fds, or a console socket */
            int terminal = (int)u32();
            int fds[3] = {(int)u32(), (int)u32(), (int)u32()};
            uint32_t rows = u32(), cols = u32();
            install_stdio(terminal, fds, rows, cols);
            break;
        }
        case OP_RLIMIT: {
            int resource = (int)u32();
            struct rlimit lim = {(rlim_t)u64(), (rlim_t)u64()};
            if (prlimit(0, resource, &lim, NULL) < 0)
                fail();
            break;
        }
        case OP_WORKDIR:
            if (makedirs(str(), 0755) < 0)
                fail();
            break;
        case OP_PROFILE: op_profile(); break;
        case OP_CHDIR:
            if (chdir(str()) < 0)
                fail();
            break;
        case OP_EXEC: op_exec(); break;
        case OP_PARK: op_park(); break;
        default:
            errno = EINVAL;
            fail_kind('o', EINVAL, "unknown step in the encoded plan");
        }
    }
    errno = EINVAL;
    fail_kind('o', EINVAL, "the encoded plan has no exec");
}

/* glibc's posix_spawn leaves its two internal signals (32 and 33: thread cancellation
 * and set*id broadcast) ignored in what it starts, and an ignored signal stays ignored
 * across execve; the workload must start with every signal at its default, as the Python
 * path's does. glibc's sigaction refuses them: the system call. */
static void default_internal_signals(void)
{
    struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; }
        action = {SIG_DFL, 0, NULL, 0};
    for (int sig = 32; sig <= 33; sig++)
        syscall(SYS_rt_sigaction, sig, &action, NULL, sizeof action.mask);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int plan_fd = atoi(argv[1]);
    begin(argv[2]);
    default_internal_signals();
    struct stat st;
    if (fstat(plan_fd, &st) < 0)
        fail();
    plan_len = (size_t)st.st_size;
    plan = mmap(NULL, plan_len ? plan_len : 1, PROT_READ, MAP_PRIVATE, plan_fd, 0);
    if (plan == MAP_FAILED)
        fail();
    close(plan_fd);
    uint32_t magic = u32();
    if (magic != SETUP_MAGIC)
        truncated();
    snprintf(root, sizeof root, "%s", str());
    run();
    return 1;
}

/* init: runs the commands of the kernel command line, separated by ';', one after another (fork, exec, wait).
 * With no command line it runs a default workload that exercises every program briefly. */
#include "lib.h"

static const char default_workload[] =
    "hello ; syscall 1000 ; forkwait 100 ; pagefault 100 ; ptchurn 50 ; memtouch 4 seq ; memtouch 4 rand ; "
    "memtouch 4 stride ; compute 100000 ; sensitive ; fault ; preempt 3000000 ; mmutest";

static int run(char **words, int count)
{
    char args[224];
    usize n = 0;
    for (int i = 1; i < count; i++) {
        usize m = strlen(words[i]);
        if (n + m + 2 > sizeof(args)) return 126;
        if (n) args[n++] = ' ';
        memcpy(args + n, words[i], m);
        n += m;
    }
    args[n] = 0;
    i64 pid = sys_fork();
    if (pid < 0) { print("init: fork failed (%ld)\n", pid); return 125; }
    if (pid == 0) {
        i64 r = sys_exec(words[0], args);
        print("init: cannot run '%s' (error %ld)\n", words[0], -r);
        sys_exit(127);
    }
    int status = -1;
    sys_waitpid((int)pid, &status);
    if (status != 0) print("init: %s exited with status %d\n", words[0], status);
    return status;
}

int main_init(int argc, char **argv)
{
    char copy[256];
    char *words[64];
    int count = 0;
    if (argc <= 1) {
        /* Split the default workload in place. */
        memcpy(copy, default_workload, sizeof(default_workload));
        char *s = copy;
        while (*s && count < 64) {
            while (*s == ' ') *s++ = 0;
            if (!*s) break;
            words[count++] = s;
            while (*s && *s != ' ') s++;
        }
    } else {
        for (int i = 1; i < argc && count < 64; i++) words[count++] = argv[i];
    }
    int failures = 0, programs = 0, start = 0;
    for (int i = 0; i <= count; i++) {
        if (i == count || !strcmp(words[i], ";")) {
            if (i > start) {
                programs++;
                if (run(words + start, i - start) != 0) failures++;
            }
            start = i + 1;
        }
    }
    print("RESULT init programs=%d failures=%d\n", programs, failures);
    return failures ? 1 : 0;
}

/* balloon: the course's balloon driver "realized as a regular user process" (issue 15; ESX's vmmemctl,
 * Waldspurger OSDI'02 §3.2). `balloon N` allocates N pages, pins them into the virtio balloon through the balloon
 * system call (the kernel hands their PFNs to the device: the host takes their memory), reads the balloon's state,
 * unpins them and checks that what comes back is zero pages: their old contents went to the host. `balloon wait P`
 * waits, computing, until the balloon holds P pages (the host sets the target; the kernel driver inflates or
 * deflates from the timer tick), for tests and demonstrations. */
#include "lib.h"

static inline i64 sys_balloon(u64 op, void *address, u64 pages)
{
    return syscall5(SYS_BALLOON, op, (u64)address, pages, 0, 0);
}

static int wait_for(u64 pages)
{
    struct balloon_info info;
    print("balloon: waiting for %lu pages\n", pages);
    u64 rounds = 0, x = 1;
    for (;;) {
        if (sys_balloon(BALLOON_INFO, &info, 0) < 0 || !info.present) {
            print("RESULT balloon-wait present=0\n");
            return 1;
        }
        if (info.actual == pages) break;
        /* User code between the looks, so that the timer tick (which takes the new target) finds the CPU in it. */
        for (int i = 0; i < 20000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
        if (++rounds > 200000) {
            print("RESULT balloon-wait pages=%lu actual=%u target=%u timeout=1\n", pages, info.actual, info.target);
            return 1;
        }
    }
    print("RESULT balloon-wait pages=%lu actual=%u target=%u kernel=%u pinned=%u inflated=%lu deflated=%lu\n", pages,
          info.actual, info.target, info.kernel_pages, info.pinned_pages, info.inflated, info.deflated);
    return (int)(x & 0);
}

int main_balloon(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "wait")) return wait_for(parse_u64(argv[2], 0));
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 256);
    struct balloon_info before, pinned, after;
    if (sys_balloon(BALLOON_INFO, &before, 0) < 0 || !before.present) {
        print("RESULT balloon present=0\n");
        return 0;
    }
    u8 *p = sys_mmap(n * 4096);
    if ((i64)p < 0) { print("balloon: mmap of %lu pages failed\n", n); return 1; }
    for (u64 i = 0; i < n; i++) p[i * 4096] = 0xA5;           /* present and private: pinnable */
    i64 got = sys_balloon(BALLOON_PIN, p, n);
    sys_balloon(BALLOON_INFO, &pinned, 0);
    i64 back = sys_balloon(BALLOON_UNPIN, p, got > 0 ? (u64)got : n);
    sys_balloon(BALLOON_INFO, &after, 0);
    u64 zero = 0;
    for (u64 i = 0; i < n; i++) zero += p[i * 4096] == 0;     /* the host took the bytes: a zero page refills it */
    sys_munmap(p, n * 4096);
    print("RESULT balloon present=1 pages=%lu pinned=%ld unpinned=%ld actual_before=%u actual_pinned=%u actual_after=%u zeroed=%lu\n",
          n, got, back, before.actual, pinned.actual, after.actual, zero);
    return got == (i64)n && back == got && pinned.actual == before.actual + n && after.actual == before.actual ? 0 : 1;
}

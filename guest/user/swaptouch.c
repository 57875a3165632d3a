/* swaptouch PAGES [fork]: writes a pattern over PAGES pages of an anonymous mapping, then reads every page back and
 * checks it, so that a guest with fewer free frames than PAGES must page some of them out and in again (kernel/swap.c,
 * docs/overcommit.md "Guest swapping"). Without swap the kernel kills it for want of a frame, with a message saying
 * so; with swap every page must come back as written. With `fork`, a child forked after the writes checks every page
 * first (they are then shared copy-on-write, or swap entries naming one slot from both sides), then the parent.
 *
 * The pattern and checksum are defined so that the host can recompute both (tests/Nestor.Integration.Tests/
 * GuestSwapTests.cs): word k (0..511) of page i is fmix64(i << 16 ^ k ^ 0x5357415054434855) (MurmurHash3's 64-bit
 * finalizer); the checksum is FNV-1a over the 64-bit words read back, page by page in ascending order. */
#include "lib.h"

#define WORDS_PER_PAGE 512

static u64 pattern_word(u64 page, u64 k) { return fmix64(page << 16 ^ k ^ 0x5357415054434855UL); }

/* Reads every page back: the pages that differ from the pattern; *checksum the FNV-1a of the words read. */
static u64 verify(const u64 *p, u64 pages, u64 *checksum)
{
    u64 sum = 0xcbf29ce484222325UL, bad_pages = 0;
    for (u64 i = 0; i < pages; i++) {
        const u64 *page = p + i * WORDS_PER_PAGE;
        int bad = 0;
        for (u64 k = 0; k < WORDS_PER_PAGE; k++) {
            u64 w = page[k];
            sum = (sum ^ w) * 0x100000001b3UL;
            if (w != pattern_word(i, k)) bad = 1;
        }
        if (bad) {
            if (bad_pages < 4) print("swaptouch: page %lu does not hold what was written\n", i);
            bad_pages++;
        }
    }
    *checksum = sum;
    return bad_pages;
}

int main_swaptouch(int argc, char **argv)
{
    u64 pages = parse_u64(argc > 1 ? argv[1] : 0, 4096);
    if (!pages) { print("swaptouch: PAGES must be at least 1\n"); return 1; }
    int fork_child = argc > 2 && !strcmp(argv[2], "fork");
    if (argc > 2 && !fork_child) { print("swaptouch: the only mode is fork, not '%s'\n", argv[2]); return 1; }
    u64 free_at_start = (u64)sys_kinfo_of(KINFO_FREE_FRAMES);
    u64 *p = sys_mmap(pages * 4096);
    if ((i64)p < 0) { print("swaptouch: mmap of %lu pages failed (%ld)\n", pages, (i64)p); return 1; }
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < pages; i++) {
        u64 *page = p + i * WORDS_PER_PAGE;
        for (u64 k = 0; k < WORDS_PER_PAGE; k++) page[k] = pattern_word(i, k);
    }
    int child_status = 0;
    if (fork_child) {
        i64 pid = sys_fork();
        if (pid < 0) { print("swaptouch: fork failed (%ld)\n", pid); return 1; }
        if (pid == 0) {
            u64 child_checksum, child_bad = verify(p, pages, &child_checksum);
            print("RESULT swaptouch_child pages=%lu bad_pages=%lu checksum=%lx\n", pages, child_bad, child_checksum);
            sys_exit(child_bad ? 1 : 0);
        }
        child_status = -1;
        sys_waitpid((int)pid, &child_status);
    }
    u64 checksum, bad_pages = verify(p, pages, &checksum);
    u64 t = sys_uptime() - t0;
    sys_munmap(p, pages * 4096);
    print("RESULT swaptouch pages=%lu free_at_start=%lu bad_pages=%lu checksum=%lx child_status=%d total_cycles=%lu\n",
          pages, free_at_start, bad_pages, checksum, child_status, t);
    return bad_pages || child_status ? 1 : 0;
}

/* migtouch PAGES ROUNDS [RATE]: the workload of QEMU's migration tests (tests/qtest/migration-test's guest): it
 * increments one byte in every page of a PAGES-page area, page after page, ROUNDS times over, so that a live
 * migration under way always finds a writable working set of up to PAGES pages. RATE, if given and not 0, is the
 * dirty rate: after every RATE pages it does a fixed amount of integer work (2,048 steps of an LCG), so a smaller RATE
 * dirties fewer pages per instruction (a smaller writable working set per pre-copy round, Clark et al. NSDI'05 §4).
 * (NestorOS's older memtouch SIZE_MB MODE, in programs.c, measures the TLB; this one is for migration.)
 *
 * The checker runs in the program: before incrementing page i in round r it checks that the page holds r-1 (mod 256)
 * and that page i-1 already holds r, i.e. that every counter is at most one step behind its neighbour (QEMU's check);
 * after the last round every counter must hold ROUNDS (mod 256). A page a migration lost or sent stale breaks one of
 * these. RESULT prints the counts of bad pages and a checksum (FNV-1a over the final counters and the LCG's value),
 * which must equal an unmigrated run's. "migtouch: started" says the area is mapped and the rounds begin. */
#include "lib.h"

#define SPIN_STEPS 2048

int main_migtouch(int argc, char **argv)
{
    u64 pages = parse_u64(argc > 1 ? argv[1] : 0, 1024);
    u64 rounds = parse_u64(argc > 2 ? argv[2] : 0, 100);
    u64 rate = parse_u64(argc > 3 ? argv[3] : 0, 0);
    if (!pages || !rounds) { print("migtouch: PAGES and ROUNDS must be at least 1\n"); return 1; }
    volatile u8 *area = sys_mmap(pages * 4096);
    if ((i64)area < 0) { print("migtouch: mmap of %lu pages failed (%ld)\n", pages, (i64)area); return 1; }
    print("migtouch: started pages=%lu rounds=%lu rate=%lu\n", pages, rounds, rate);
    u64 stale = 0, behind = 0, x = 1, since = 0;
    for (u64 r = 1; r <= rounds; r++) {
        for (u64 i = 0; i < pages; i++) {
            u8 before = area[i * 4096];
            if (before != (u8)(r - 1)) {
                if (stale < 4) print("migtouch: round %lu: page %lu holds %u, not %u\n", r, i, before, (u8)(r - 1));
                stale++;
            }
            if (i > 0 && area[(i - 1) * 4096] != (u8)r) {
                if (behind < 4) print("migtouch: round %lu: page %lu is behind page %lu\n", r, i - 1, i);
                behind++;
            }
            area[i * 4096] = (u8)(before + 1);
            if (rate && ++since == rate) {
                since = 0;
                for (int k = 0; k < SPIN_STEPS; k++) x = x * 6364136223846793005UL + 1442695040888963407UL;
            }
        }
    }
    u64 wrong = 0, sum = 0xcbf29ce484222325UL;
    for (u64 i = 0; i < pages; i++) {
        u8 v = area[i * 4096];
        if (v != (u8)rounds) wrong++;
        sum = (sum ^ v) * 0x100000001b3UL;
    }
    sum = (sum ^ x) * 0x100000001b3UL;
    sys_munmap((void *)area, pages * 4096);
    print("RESULT migtouch pages=%lu rounds=%lu rate=%lu stale=%lu behind=%lu wrong=%lu checksum=%lx\n", pages, rounds, rate,
          stale, behind, wrong, sum);
    return stale || behind || wrong ? 1 : 0;
}

/* steal [N]: N rounds of integer work (10,000,000 by default), then the vCPU's steal time as the host's steal-time
 * port reports it (kernel/steal.c): how long it was ready but not running because other VMs had the host CPU.
 * Without that device (one VM per process: nestor run, QEMU) the ports read all ones: the program says so. */
#include "lib.h"

int main_steal(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 10000000);
    u64 before = (u64)sys_kinfo_of(KINFO_STEAL);
    if (before == ~0UL) { print("steal: no steal-time device (ports 0x5F0/0x5F4 read all ones): run it on nestor host run\n"); return 1; }
    u64 x = 1;
    for (u64 i = 0; i < n; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    u64 after = (u64)sys_kinfo_of(KINFO_STEAL);
    print("RESULT steal n=%lu x=%lx steal_ns=%lu\n", n, x, after - before);
    return 0;
}

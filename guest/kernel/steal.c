/* Steal time (docs/paravirt.md, "Steal time"): on a host of many VMs (nestor host run) the VMM gives every VM a
 * steal-time port, the time its vCPU was runnable but waiting for a host CPU, in nanoseconds: a 32-bit IN from 0x5F0
 * is the low half, from 0x5F4 the high half (KVM's kvm_steal_time.steal, Documentation/virt/kvm/x86/msr.rst). The
 * value changes only between the vCPU's slices, so reading high, low, high and retrying while the highs differ gives
 * a consistent 64-bit value, as KVM's version field does. The ports are the kernel's: user code reaches them through
 * SYS_KINFO KINFO_STEAL. */
#include "kernel.h"

#define STEAL_PORT_LOW  0x5F0
#define STEAL_PORT_HIGH 0x5F4

static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

u64 steal_time_ns(void)
{
    u32 high, low;
    do {
        high = inl(STEAL_PORT_HIGH);
        low = inl(STEAL_PORT_LOW);
    } while (inl(STEAL_PORT_HIGH) != high);
    return ((u64)high << 32) | low;
}

/* The split driver's hypercalls (docs/paravirt.md, "The service VM"; include/nestoros.h SPLIT_HC_*) and the event
 * channel's interrupt, for both the front-end (blkfront.c) and the back-end (blkback.c). */
#include "blkring.h"

#define EVENT_CHANNEL_GSI 9          /* the I/O APIC input the VMM raises for a pending event (ServiceVmHost) */

volatile int event_seen;

int split_driver_offered(void)
{
    if (!running_on_nestor) return 0;
    u32 eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0x40000000), "c"(0));
    if (eax < NESTOR_CPUID_FEATURES) return 0;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(NESTOR_CPUID_FEATURES), "c"(0));
    return (eax & NESTOR_FEATURE_SPLIT_DRIVER) != 0;
}

/* The descriptor is read by the VMM from guest-physical memory: a static in the kernel's identity map. The kernel is
 * never preempted, so one serves. */
static struct { u32 reference, flags; u64 local; u32 offset, length; } copy_descriptor;

int grant_copy(u32 reference, int to_granted, u64 local, u32 offset, u32 length)
{
    copy_descriptor.reference = reference;
    copy_descriptor.flags = to_granted ? GRANT_COPY_TO_GRANTED : 0;
    copy_descriptor.local = local;
    copy_descriptor.offset = offset;
    copy_descriptor.length = length;
    return hypercall(SPLIT_HC_GRANT_COPY, (u64)&copy_descriptor, 0) == SPLIT_REFUSED ? -1 : 0;
}

void event_notify(void)
{
    hypercall(SPLIT_HC_EVENT_NOTIFY, BLKRING_CHANNEL, 0);
}

void event_channel_init(void)
{
    ioapic_route(EVENT_CHANNEL_GSI, EVENT_VECTOR, 0);   /* edge: the VMM raises and lowers the line per event */
}

void event_channel_interrupt(void)
{
    event_seen = 1;
    local_apic_eoi();
}

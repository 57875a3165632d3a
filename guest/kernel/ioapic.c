/* The I/O APIC (Intel 82093AA I/O Advanced Programmable Interrupt Controller datasheet, register description): just
 * enough to route a disk controller's interrupt line to a vector on this (the only) CPU. The registers are reached
 * indirectly: the register number goes to IOREGSEL (offset 0), its value through IOWIN (offset 0x10). Redirection
 * entry n is the register pair 0x10 + 2n (low dword: vector, delivery, polarity, trigger, mask) and 0x11 + 2n
 * (destination). */
#include "block.h"

#define IOAPIC 0xFEC00000UL
#define LOCAL_APIC 0xFEE00000UL
#define REDIRECTION_LEVEL (1u << 15)     /* trigger mode: 1 level, 0 edge */
#define REDIRECTION_MASKED (1u << 16)

static void ioapic_write(u32 reg, u32 value)
{
    mmio_write32(IOAPIC, reg);
    mmio_write32(IOAPIC + 0x10, value);
}

void ioapic_route(u32 gsi, u8 vector, int level_triggered)
{
    u32 apic_id = mmio_read32(LOCAL_APIC + 0x20) >> 24;     /* SDM Vol. 3A §10.4.6: the local APIC ID register */
    /* Masked while the entry is half written, then: fixed delivery, physical destination, active high. */
    ioapic_write(0x10 + 2 * gsi, REDIRECTION_MASKED);
    ioapic_write(0x11 + 2 * gsi, apic_id << 24);
    ioapic_write(0x10 + 2 * gsi, vector | (level_triggered ? REDIRECTION_LEVEL : 0));
}

void local_apic_eoi(void)
{
    mmio_write32(LOCAL_APIC + 0xB0, 0);
}

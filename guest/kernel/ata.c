/* ATA PIO driver for the primary channel (ATA/ATAPI-6, ANSI INCITS 361-2002): IDENTIFY DEVICE, READ/WRITE SECTORS
 * (EXT), FLUSH CACHE (EXT), data through the 16-bit data port with REP INSW/OUTSW. Under a VMM every one of those
 * port accesses is an exit: 256 per sector, which is what the emulated way of doing device I/O costs.
 *
 * Polling is the default (ata=poll): the kernel never runs with interrupts enabled except while it waits, and a
 * polled status read costs one exit where an interrupt costs the exit of its delivery, the handler's status read
 * and the EOI, so polling is both simpler and cheaper per DRQ block; ata=irq shows the interrupt path (IRQ 14 through
 * the I/O APIC; INTRQ is raised per DRQ block and at command completion, and cleared by reading Status). */
#include "block.h"

#define ATA_DATA      0x1F0
#define ATA_ERROR     0x1F1
#define ATA_COUNT     0x1F2
#define ATA_LBA_LOW   0x1F3
#define ATA_LBA_MID   0x1F4
#define ATA_LBA_HIGH  0x1F5
#define ATA_DEVICE    0x1F6
#define ATA_STATUS    0x1F7   /* read: Status (clears INTRQ); write: Command */
#define ATA_CONTROL   0x3F6   /* read: Alternate Status (does not); write: Device Control */
#define ATA_GSI       14

#define STATUS_ERR  0x01
#define STATUS_DRQ  0x08
#define STATUS_DF   0x20
#define STATUS_DRDY 0x40
#define STATUS_BSY  0x80
#define CONTROL_NIEN 0x02     /* Device Control: interrupts (INTRQ) from the drive disabled */
#define DEVICE_LBA  0x40

#define CMD_READ_SECTORS      0x20
#define CMD_READ_SECTORS_EXT  0x24
#define CMD_WRITE_SECTORS     0x30
#define CMD_WRITE_SECTORS_EXT 0x34
#define CMD_FLUSH_CACHE       0xE7
#define CMD_FLUSH_CACHE_EXT   0xEA
#define CMD_IDENTIFY_DEVICE   0xEC

/* A bound on every wait, so a device that never answers is an error and not a hang. */
#define ATA_SPIN_LIMIT 10000000UL

struct ata_drive { int slave, lba48, use_interrupts; };

static struct ata_drive drives[2];

/* The data port, one 16-bit word per access: REP INSW / REP OUTSW (SDM Vol. 2B, INS/OUTS), on every machine
 * (Nestor's software machine models them). Every word is still one port access, and under a trapping VMM one exit
 * (hardware assist: one I/O exit per iteration, SDM Vol. 3C §26.1.3). */
static void read_words(u64 buffer, u64 words)
{
    __asm__ volatile("rep insw" : "+D"(buffer), "+c"(words) : "d"((u16)ATA_DATA) : "memory");
}

static void write_words(u64 buffer, u64 words)
{
    __asm__ volatile("rep outsw" : "+S"(buffer), "+c"(words) : "d"((u16)ATA_DATA) : "memory");
}
static volatile int ata_irq_seen;
static int interrupts_routed;

void ata_interrupt(void)
{
    (void)inb(ATA_STATUS);   /* reading Status (not Alternate Status) acknowledges INTRQ */
    ata_irq_seen = 1;
    local_apic_eoi();
}

/* 400 ns after selecting a device before its status is valid: four Alternate Status reads, as the standard advises. */
static void settle(void)
{
    for (int i = 0; i < 4; i++) (void)inb(ATA_CONTROL);
}

static int wait_not_busy(u8 *status)
{
    for (u64 i = 0; i < ATA_SPIN_LIMIT; i++) {
        u8 s = inb(ATA_STATUS);
        if (!(s & STATUS_BSY)) { *status = s; return 0; }
    }
    return -E_IO;
}

/* Waits for the next DRQ block (or the command's end): by interrupt in irq mode, else by polling Status. */
static int wait_ready(struct ata_drive *drive, u8 *status)
{
    if (drive->use_interrupts) {
        wait_for_interrupt_flag(&ata_irq_seen);
        ata_irq_seen = 0;
        *status = inb(ATA_CONTROL);   /* the handler read Status already; Alternate Status does not ack again */
        if (*status & STATUS_BSY) return wait_not_busy(status);
        return 0;
    }
    return wait_not_busy(status);
}

static void select_drive(struct ata_drive *drive, u8 head_bits)
{
    outb(ATA_DEVICE, (u8)(0xA0 | DEVICE_LBA | (drive->slave << 4) | head_bits));
    settle();
}

/* Loads the task file for an LBA28 or LBA48 command (for the 48-bit address feature set each register is written
 * twice, the high-order byte first) and issues it; count is 1..2048. The 28-bit command is used whenever it can address the
 * request (below sector 2^28, at most 256 sectors): four port writes fewer, which under a VMM are four exits. */
static void issue(struct ata_drive *drive, u8 command28, u8 command48, u64 lba, u64 count)
{
    if (drive->lba48 && (lba + count > (1UL << 28) || count > 256)) {
        select_drive(drive, 0);
        outb(ATA_COUNT, (u8)(count >> 8));
        outb(ATA_LBA_LOW, (u8)(lba >> 24));
        outb(ATA_LBA_MID, (u8)(lba >> 32));
        outb(ATA_LBA_HIGH, (u8)(lba >> 40));
        outb(ATA_COUNT, (u8)count);
        outb(ATA_LBA_LOW, (u8)lba);
        outb(ATA_LBA_MID, (u8)(lba >> 8));
        outb(ATA_LBA_HIGH, (u8)(lba >> 16));
        outb(ATA_STATUS, command48);
    } else {
        select_drive(drive, (u8)((lba >> 24) & 0x0F));
        outb(ATA_COUNT, (u8)count);          /* 256 is written as 0 (a count of 0 means 256 sectors) */
        outb(ATA_LBA_LOW, (u8)lba);
        outb(ATA_LBA_MID, (u8)(lba >> 8));
        outb(ATA_LBA_HIGH, (u8)(lba >> 16));
        outb(ATA_STATUS, command28);
    }
}

static void set_interrupts(struct ata_drive *drive)
{
    outb(ATA_CONTROL, drive->use_interrupts ? 0 : CONTROL_NIEN);
}

/* Sectors per command: 256 for LBA28 (a count of 0), 2048 (1 MiB, the block layer's limit) for LBA48. */
static u64 per_command(struct ata_drive *drive) { return drive->lba48 ? 2048 : 256; }

static i64 ata_read(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    struct ata_drive *drive = device->driver;
    set_interrupts(drive);
    while (count) {
        u64 n = count < per_command(drive) ? count : per_command(drive);
        ata_irq_seen = 0;
        issue(drive, CMD_READ_SECTORS, CMD_READ_SECTORS_EXT, sector, n);
        for (u64 i = 0; i < n; i++) {
            u8 status;
            if (wait_ready(drive, &status) < 0) return -E_IO;
            if (status & (STATUS_ERR | STATUS_DF) || !(status & STATUS_DRQ)) return -E_IO;
            read_words(buffer + i * SECTOR_SIZE, SECTOR_SIZE / 2);
        }
        sector += n;
        count -= n;
        buffer += n * SECTOR_SIZE;
    }
    return 0;
}

static i64 ata_write(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    struct ata_drive *drive = device->driver;
    set_interrupts(drive);
    while (count) {
        u64 n = count < per_command(drive) ? count : per_command(drive);
        issue(drive, CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_EXT, sector, n);
        for (u64 i = 0; i < n; i++) {
            u8 status;
            /* The PIO data-out protocol: the first DRQ block is polled for; each later one, and the end, interrupts. */
            int r = i == 0 ? wait_not_busy(&status) : wait_ready(drive, &status);
            if (r < 0 || status & (STATUS_ERR | STATUS_DF) || !(status & STATUS_DRQ)) return -E_IO;
            ata_irq_seen = 0;
            write_words(buffer + i * SECTOR_SIZE, SECTOR_SIZE / 2);
        }
        u8 status;
        if (wait_ready(drive, &status) < 0 || status & (STATUS_ERR | STATUS_DF)) return -E_IO;
        sector += n;
        count -= n;
        buffer += n * SECTOR_SIZE;
    }
    return 0;
}

static i64 ata_flush(struct block_device *device)
{
    struct ata_drive *drive = device->driver;
    set_interrupts(drive);
    ata_irq_seen = 0;
    select_drive(drive, 0);
    outb(ATA_STATUS, drive->lba48 ? CMD_FLUSH_CACHE_EXT : CMD_FLUSH_CACHE);
    u8 status;
    if (wait_ready(drive, &status) < 0 || status & (STATUS_ERR | STATUS_DF)) return -E_IO;
    return 0;
}

static const struct block_operations ata_operations = { ata_read, ata_write, ata_flush };

/* IDENTIFY DEVICE on one drive; 0 and the 256 words when an ATA device answers. */
static int identify(struct ata_drive *drive, u16 *words)
{
    outb(ATA_CONTROL, CONTROL_NIEN);
    select_drive(drive, 0);
    u8 status = inb(ATA_STATUS);
    /* An empty channel floats high (0xFF); an absent drive on a populated channel reads 0. */
    if (status == 0xFF || status == 0) return -1;
    outb(ATA_COUNT, 0);
    outb(ATA_LBA_LOW, 0);
    outb(ATA_LBA_MID, 0);
    outb(ATA_LBA_HIGH, 0);
    outb(ATA_STATUS, CMD_IDENTIFY_DEVICE);
    status = inb(ATA_STATUS);
    if (status == 0 || status == 0xFF) return -1;
    if (wait_not_busy(&status) < 0) return -1;
    /* A packet (ATAPI) device aborts IDENTIFY DEVICE and leaves its signature 0x14/0xEB in LBA mid/high. */
    if (inb(ATA_LBA_MID) || inb(ATA_LBA_HIGH)) return -1;
    for (u64 i = 0; i < ATA_SPIN_LIMIT && !(status & (STATUS_DRQ | STATUS_ERR)); i++) status = inb(ATA_STATUS);
    if (status & STATUS_ERR || !(status & STATUS_DRQ)) return -1;
    read_words((u64)words, 256);
    return 0;
}

void ata_probe(int use_interrupts)
{
    /* Status before anything is written: a channel with no drive floats high (0xFF), so an empty channel costs one
     * read and no stray writes. */
    if (inb(ATA_STATUS) == 0xFF) return;
    for (int slave = 0; slave < 2; slave++) {
        struct ata_drive *drive = &drives[slave];
        drive->slave = slave;
        u16 words[256];
        if (identify(drive, words) < 0) continue;
        /* Word 83 bit 10: the 48-bit address feature set; then the capacity is words 100-103, else 60-61. */
        drive->lba48 = (words[83] & (1u << 10)) != 0;
        u64 sectors = drive->lba48
            ? (u64)words[100] | (u64)words[101] << 16 | (u64)words[102] << 32 | (u64)words[103] << 48
            : (u64)words[60] | (u64)words[61] << 16;
        if (!sectors) continue;
        drive->use_interrupts = use_interrupts;
        if (use_interrupts && !interrupts_routed) {
            ioapic_route(ATA_GSI, ATA_VECTOR, 0);   /* ISA IRQ 14: edge-triggered, active high */
            interrupts_routed = 1;
        }
        char name[5] = { 'a', 't', 'a', (char)('0' + slave), 0 };
        block_register(name, sectors, 0, BLK_INTERFACE_ATA,
                       (drive->lba48 ? BLK_FLAG_LBA48 : 0) | (use_interrupts ? BLK_FLAG_INTERRUPTS : 0) | BLK_FLAG_FLUSH,
                       &ata_operations, drive);
    }
    outb(ATA_CONTROL, CONTROL_NIEN);
}

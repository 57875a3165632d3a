/* The disk programs, over the block layer's blkinfo/blkio (docs/guest.md):
 *
 *   disktest DEV [seq|rand] [SIZE]    write a pattern, flush, read it back and verify, for each request size from
 *                                     512 B to 1 MiB (or just SIZE), at sequential or pseudo-random offsets
 *   diskbench DEV read|write SIZE COUNT   COUNT requests of SIZE bytes at sequential offsets, timed
 *
 * The pattern and the checksum are defined here so that the host can recompute both (and the image's final bytes):
 * word k (0..63) of sector s written in pass p is fmix64(s << 16 ^ p << 8 ^ k ^ 0x9E3779B97F4A7C15) (MurmurHash3's
 * 64-bit finalizer); the checksum is FNV-1a over the 64-bit words read, in the order read. */
#include "lib.h"

#define WORDS_PER_SECTOR (BLK_SECTOR_SIZE / 8)
#define DISKTEST_BYTES_PER_SIZE (64UL << 10)   /* each request size moves this much, or one request if larger */
#define FNV_OFFSET 0xcbf29ce484222325UL
#define FNV_PRIME 0x100000001b3UL

static u64 pattern_word(u64 sector, u64 pass, u64 k) { return fmix64(sector << 16 ^ pass << 8 ^ k ^ 0x9E3779B97F4A7C15UL); }

static void fill(u64 *buffer, u64 sector, u64 sectors, u64 pass)
{
    for (u64 s = 0; s < sectors; s++)
        for (u64 k = 0; k < WORDS_PER_SECTOR; k++) buffer[s * WORDS_PER_SECTOR + k] = pattern_word(sector + s, pass, k);
}

/* DEV is a block device's name (ata0, vda, nd0, ...) or its index. Returns the index and fills info, or -1. */
static i64 find_device(const char *program, const char *dev, struct blk_info *info)
{
    for (u64 i = 0; i < 16; i++) {
        if (sys_blkinfo(i, info) < 0) break;
        if (!strcmp(info->name, dev)) return (i64)i;
    }
    u64 index = parse_u64(dev, ~0UL);
    if (index != ~0UL && sys_blkinfo(index, info) == 0) return (i64)index;
    print("%s: no block device '%s' (give a name such as ata0, vda, nd0, or an index)\n", program, dev);
    return -1;
}

static u64 floor_power_of_two(u64 n)
{
    u64 p = 1;
    while (p <= n / 2) p <<= 1;
    return n ? p : 0;
}

/* A full-period LCG modulo a power of two (Hull & Dobell: c odd, a - 1 divisible by 4): Knuth's MMIX constants. */
static u64 lcg_next(u64 x, u64 modulus) { return (x * 6364136223846793005UL + 1442695040888963407UL) & (modulus - 1); }

struct totals { u64 bytes, requests, errors, checksum; };

/* One request size: N requests (N = min(slots, 64 KiB / size, at least 1)) written, a flush, the same N read back
 * and verified. Slots are size-aligned; their count is rounded down to a power of two for the LCG. */
static void disktest_size(i64 dev, const struct blk_info *info, u64 size, int random, u64 *buffer, struct totals *t)
{
    u64 sectors = size / BLK_SECTOR_SIZE;
    u64 slots = floor_power_of_two(info->sectors / sectors);
    if (!slots) return;
    u64 n = DISKTEST_BYTES_PER_SIZE / size;
    if (n < 1) n = 1;
    if (n > slots) n = slots;
    u64 pass = sectors | (u64)random << 12;
    u64 first = random ? fmix64(pass) & (slots - 1) : 0;
    for (int phase = 0; phase < 2; phase++) {
        u64 slot = first;
        for (u64 i = 0; i < n; i++) {
            u64 sector = slot * sectors;
            if (phase == 0) {
                fill(buffer, sector, sectors, pass);
                if (sys_blkio((u64)dev, BLK_OP_WRITE, sector, buffer, size) != (i64)size) t->errors++;
            } else {
                memset(buffer, 0, size);
                if (sys_blkio((u64)dev, BLK_OP_READ, sector, buffer, size) != (i64)size) t->errors++;
                for (u64 s = 0; s < sectors; s++) {
                    int bad = 0;
                    for (u64 k = 0; k < WORDS_PER_SECTOR; k++) {
                        u64 w = buffer[s * WORDS_PER_SECTOR + k];
                        t->checksum = (t->checksum ^ w) * FNV_PRIME;
                        bad |= w != pattern_word(sector + s, pass, k);
                    }
                    t->errors += (u64)bad;
                }
                t->bytes += size;
            }
            t->requests++;
            slot = random ? lcg_next(slot, slots) : slot + 1;
        }
        if (phase == 0 && sys_blkio((u64)dev, BLK_OP_FLUSH, 0, 0, 0) != 0) t->errors++;
    }
}

int main_disktest(int argc, char **argv)
{
    if (argc < 2) { print("usage: disktest DEV [seq|rand] [SIZE]\n"); return 2; }
    struct blk_info info;
    i64 dev = find_device(argv[0], argv[1], &info);
    if (dev < 0) return 2;
    int random = argc > 2 && !strcmp(argv[2], "rand");
    if (argc > 2 && !random && strcmp(argv[2], "seq")) { print("disktest: the mode is seq or rand, not %s\n", argv[2]); return 2; }
    u64 only = parse_u64(argc > 3 ? argv[3] : 0, 0);
    if (argc > 3 && (only == 0 || only % BLK_SECTOR_SIZE || only > BLK_MAX_TRANSFER)) {
        print("disktest: SIZE must be a multiple of 512 up to 1048576, not %s\n", argv[3]);
        return 2;
    }
    if (info.read_only) { print("disktest: %s is read-only\n", info.name); return 2; }
    u64 *buffer = sys_mmap(BLK_MAX_TRANSFER);
    if ((i64)buffer < 0) { print("disktest: mmap failed\n"); return 1; }
    struct totals t = { 0, 0, 0, FNV_OFFSET };
    if (only) disktest_size(dev, &info, only, random, buffer, &t);
    else for (u64 size = BLK_SECTOR_SIZE; size <= BLK_MAX_TRANSFER; size <<= 1) disktest_size(dev, &info, size, random, buffer, &t);
    sys_munmap(buffer, BLK_MAX_TRANSFER);
    print("RESULT disktest dev=%s mode=%s bytes=%lu requests=%lu errors=%lu checksum=%lx\n", info.name,
          random ? "rand" : "seq", t.bytes, t.requests, t.errors, t.checksum);
    return t.errors || !t.bytes ? 1 : 0;
}

int main_diskbench(int argc, char **argv)
{
    if (argc < 5) { print("usage: diskbench DEV read|write SIZE COUNT\n"); return 2; }
    struct blk_info info;
    i64 dev = find_device(argv[0], argv[1], &info);
    if (dev < 0) return 2;
    int write = !strcmp(argv[2], "write");
    if (!write && strcmp(argv[2], "read")) { print("diskbench: the operation is read or write, not %s\n", argv[2]); return 2; }
    u64 size = parse_u64(argv[3], 0), count = parse_u64(argv[4], 0);
    if (size == 0 || size % BLK_SECTOR_SIZE || size > BLK_MAX_TRANSFER || size / BLK_SECTOR_SIZE > info.sectors) {
        print("diskbench: SIZE must be a multiple of 512 up to 1048576 and the disk's size, not %s\n", argv[3]);
        return 2;
    }
    u64 *buffer = sys_mmap(size);
    if ((i64)buffer < 0) { print("diskbench: mmap failed\n"); return 1; }
    u64 sectors = size / BLK_SECTOR_SIZE, slots = info.sectors / sectors, errors = 0;
    if (write) fill(buffer, 0, sectors, 1UL << 13);
    else memset(buffer, 0, size);                  /* touch the pages first: the timed loop measures the disk */
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < count; i++) {
        if (sys_blkio((u64)dev, write ? BLK_OP_WRITE : BLK_OP_READ, (i % slots) * sectors, buffer, size) != (i64)size) errors++;
    }
    if (write && sys_blkio((u64)dev, BLK_OP_FLUSH, 0, 0, 0) != 0) errors++;
    u64 t = sys_uptime() - t0;
    sys_munmap(buffer, size);
    if (errors) print("diskbench: %lu requests failed\n", errors);
    print("RESULT diskbench dev=%s op=%s size=%lu count=%lu bytes=%lu total_cycles=%lu per_op_cycles=%lu\n", info.name,
          write ? "write" : "read", size, count, size * count, t, count ? t / count : 0);
    return errors ? 1 : 0;
}

/* diskcheck DEV: the block layer's refusals, each call's result as the kernel returned it (-errno), and a rewrite
 * of sector 0 with what it holds (the bytes count, or -EROFS on a read-only disk). */
int main_diskcheck(int argc, char **argv)
{
    if (argc < 2) { print("usage: diskcheck DEV\n"); return 2; }
    struct blk_info info;
    i64 dev = find_device(argv[0], argv[1], &info);
    if (dev < 0) return 2;
    u8 *buffer = sys_mmap(2 * BLK_MAX_TRANSFER);
    if ((i64)buffer < 0) { print("diskcheck: mmap failed\n"); return 1; }
    u64 d = (u64)dev;
    i64 info_bad_index = sys_blkinfo(1000, &info);
    sys_blkinfo(d, &info);
    i64 bad_index = sys_blkio(1000, BLK_OP_READ, 0, buffer, BLK_SECTOR_SIZE);
    i64 unaligned = sys_blkio(d, BLK_OP_READ, 0, buffer, BLK_SECTOR_SIZE + 100);
    i64 empty = sys_blkio(d, BLK_OP_READ, 0, buffer, 0);
    i64 too_large = sys_blkio(d, BLK_OP_READ, 0, buffer, 2 * BLK_MAX_TRANSFER);
    i64 beyond_end = sys_blkio(d, BLK_OP_READ, info.sectors - 1, buffer, 2 * BLK_SECTOR_SIZE);
    i64 past_end = sys_blkio(d, BLK_OP_READ, info.sectors, buffer, BLK_SECTOR_SIZE);
    i64 bad_op = sys_blkio(d, 7, 0, buffer, BLK_SECTOR_SIZE);
    i64 kernel_buffer = sys_blkio(d, BLK_OP_READ, 0, (void *)0x100000UL, BLK_SECTOR_SIZE);
    i64 last = sys_blkio(d, BLK_OP_READ, info.sectors - 1, buffer, BLK_SECTOR_SIZE);
    i64 read = sys_blkio(d, BLK_OP_READ, 0, buffer, BLK_SECTOR_SIZE);
    i64 rewrite = sys_blkio(d, BLK_OP_WRITE, 0, buffer, BLK_SECTOR_SIZE);
    i64 flush = sys_blkio(d, BLK_OP_FLUSH, 0, 0, 0);
    struct blk_info after;
    sys_blkinfo(d, &after);
    sys_munmap(buffer, 2 * BLK_MAX_TRANSFER);
    print("RESULT diskcheck dev=%s info_bad_index=%ld bad_index=%ld unaligned=%ld empty=%ld too_large=%ld beyond_end=%ld "
          "past_end=%ld bad_op=%ld kernel_buffer=%ld last=%ld read=%ld rewrite=%ld flush=%ld read_only=%u requests=%lu "
          "errors=%lu\n", info.name, info_bad_index, bad_index, unaligned, empty, too_large, beyond_end, past_end, bad_op,
          kernel_buffer, last, read, rewrite, flush, info.read_only, after.requests - info.requests, after.errors - info.errors);
    return 0;
}

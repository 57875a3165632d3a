/* Physical frame allocator: a free list threaded through the free frames themselves (they are identity-mapped),
 * and a reference count per frame so that fork can share frames copy-on-write. */
#include "kernel.h"

static u64 free_list;
static u64 free_count;
static u16 *refcounts;
static u64 refcount_frames;

void frames_init_refcounts(u64 top)
{
    /* The refcount array is carved from the first free frames. */
    refcount_frames = top / PAGE_SIZE;
    u64 bytes = refcount_frames * sizeof(u16);
    u64 pages = (bytes + PAGE_SIZE - 1) / PAGE_SIZE;
    u64 first = 0;
    for (u64 i = 0; i < pages; i++) {
        u64 f = free_list;
        if (!f) panic("no memory for frame reference counts");
        free_list = *(u64 *)f;
        free_count--;
        if (i == 0) first = f;
        else if (f != first + i * PAGE_SIZE) panic("reference-count frames are not contiguous");
    }
    refcounts = (u16 *)first;
    memset(refcounts, 0, pages * PAGE_SIZE);
}

void frames_add_range(u64 start, u64 end)
{
    start = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    end &= ~(PAGE_SIZE - 1);
    /* Push in descending order so that allocation hands out ascending addresses. */
    for (u64 f = end; f > start; ) {
        f -= PAGE_SIZE;
        *(u64 *)f = free_list;
        free_list = f;
        free_count++;
    }
}

u64 frame_alloc(void)
{
    u64 f = free_list;
    if (!f) return 0;
    free_list = *(u64 *)f;
    free_count--;
    memset((void *)f, 0, PAGE_SIZE);
    refcounts[f / PAGE_SIZE] = 1;
    return f;
}

void frame_ref(u64 frame) { refcounts[frame / PAGE_SIZE]++; }
u32 frame_refcount(u64 frame) { return refcounts[frame / PAGE_SIZE]; }
u64 frames_free_count(void) { return free_count; }

void frame_unref(u64 frame)
{
    u16 *r = &refcounts[frame / PAGE_SIZE];
    if (*r == 0) panic("frame %p freed twice", frame);
    if (--*r == 0) {
        *(u64 *)frame = free_list;
        free_list = frame;
        free_count++;
    }
}

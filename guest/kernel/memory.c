/* Physical frame allocator: a free list threaded through the free frames themselves (they are identity-mapped),
 * and a reference count per frame so that fork can share frames copy-on-write. */
#include "kernel.h"
#include "virtio_balloon.h"

static u64 free_list;
static u64 free_count;
static u16 *refcounts;
static u64 refcount_frames;
int (*frames_low)(void);

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
    if (!f && frames_low && frames_low()) f = free_list;
    if (!f && balloon_deflate_on_oom()) f = free_list;   /* VIRTIO_BALLOON_F_DEFLATE_ON_OOM (virtio_balloon.c) */
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

/* Takes `count` physically contiguous free frames for a device buffer (the block layer's bounce buffer), never to be
 * freed. It looks for a run of consecutive addresses among consecutive free-list entries, which is how the list
 * starts out (frames_add_range pushes in order), so it is meant to be called once at boot. Returns 0 if none. */
u64 frames_take_contiguous(u64 count)
{
    u64 *link = &free_list;          /* the link that points at the run's first frame */
    while (*link) {
        u64 first = *link, last = first, length = 1;
        while (length < count && *(u64 *)last == last + PAGE_SIZE) {
            last += PAGE_SIZE;
            length++;
        }
        if (length == count) {
            *link = *(u64 *)last;
            free_count -= count;
            for (u64 f = first; f <= last; f += PAGE_SIZE) refcounts[f / PAGE_SIZE] = 1;
            memset((void *)first, 0, count * PAGE_SIZE);
            return first;
        }
        link = (u64 *)last;          /* the run broke after `last`: continue from its successor */
    }
    return 0;
}

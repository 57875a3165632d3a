/* The split block driver of a service-VM pair (docs/devices.md "The service VM"): blkfront.c in the user VM and
 * blkback.c in the service VM, the shape of Xen's blkif ring (xen/include/public/io/blkif.h, ring.h) over Nestor's
 * split-driver hypercalls (docs/paravirt.md): grant tables, GRANT_COPY and event channels.
 *
 * The ring is one page in the user VM's RAM that it grants writable to domain 0 as grant reference 0 (Xen passes the
 * reference through xenstore; with one device the pair agrees on it). The back-end never maps the page: it copies the
 * header and slots in and out with GRANT_COPY through that grant, so it reaches nothing else of the user VM. Each
 * request's data is in up to 8 frames the user VM grants for that request alone (read-only for a write, writable for
 * a read) and revokes when the response has come, as Xen's gnttab_end_foreign_access does. */
#ifndef BLKRING_H
#define BLKRING_H
#include "block.h"

#define BLKRING_SLOTS 32
#define BLKRING_FRAMES_PER_REQUEST 8
#define BLKRING_SECTORS_PER_REQUEST (BLKRING_FRAMES_PER_REQUEST * PAGE_SIZE / SECTOR_SIZE)   /* 64: 32 KiB */
#define BLKRING_REFERENCE 0           /* the ring's grant reference */
#define BLKRING_CHANNEL 0             /* the event channel both ends notify */
#define BLKRING_CONNECTED 0x4B4C4278  /* "xBLK": the back-end has filled in the disk's size */
#define BLKRING_DOMAIN_SERVICE 0      /* the service VM, as Xen's dom0 */

#define BLKRING_OP_READ 0
#define BLKRING_OP_WRITE 1
#define BLKRING_OP_FLUSH 2
#define BLKRING_STATUS_OK 0
#define BLKRING_STATUS_IO_ERROR 1         /* the back-end's disk reported an error */
#define BLKRING_STATUS_BAD_REQUEST 2      /* op, sector range or size malformed; a write to a read-only disk */
#define BLKRING_STATUS_GRANT_REFUSED 3    /* a data reference the VMM refused (not granted, read-only, past the table) */
#define BLKRING_STATUS_PENDING 0xFFFFFFFFu

/* The header, 32 bytes at the page's start. The planned header had only the four indexes; the front-end also needs
 * the disk's size and whether it is read-only before it can register a block device, which Xen's blkfront reads from
 * xenstore: here the back-end writes them into the header when it first sees the ring (connected = BLKRING_CONNECTED).
 * The event fields are Xen's notification suppression; the alternating host runs a VM only after a notify, so every
 * notify is needed and both ends keep them 0. */
struct blkring_header {
    u32 request_producer;     /* requests the front-end has written (mod 2^32) */
    u32 response_producer;    /* responses the back-end has written */
    u32 request_event, response_event;
    u32 connected;            /* BLKRING_CONNECTED once the back-end has filled in what follows */
    u32 read_only;
    u64 sectors;
};

/* A slot: the front-end writes a request; the back-end overwrites status in place as its response (Xen's ring keeps
 * requests and responses in one union; here the slot's fields stay, so the front-end checks the id it gave). */
struct blkring_slot {
    u64 id;
    u32 op;                   /* BLKRING_OP_* */
    u32 status;               /* BLKRING_STATUS_*, PENDING until answered */
    u64 sector;
    u32 sectors;              /* 1..64, or 0 for a flush */
    u32 data_references[BLKRING_FRAMES_PER_REQUEST];  /* one per 4 KiB of data, in order */
    u32 reserved;
};

#define BLKRING_SLOTS_OFFSET 64
struct blkring {
    struct blkring_header header;
    u8 padding[BLKRING_SLOTS_OFFSET - sizeof(struct blkring_header)];
    struct blkring_slot slots[BLKRING_SLOTS];
};
_Static_assert(sizeof(struct blkring_header) == 32, "the ring header is 32 bytes");
_Static_assert(sizeof(struct blkring_slot) == 64, "a ring slot is 64 bytes");
_Static_assert(sizeof(struct blkring) <= PAGE_SIZE, "the ring fits its page");

/* split.c: the split driver's hypercalls and the event channel's interrupt, shared by both ends. */
struct grant_entry { u16 flags; u16 domain; u32 frame; };
#define GRANT_PERMIT_ACCESS 1
#define GRANT_READ_ONLY 2
#define GRANT_COPY_TO_GRANTED 1
#define SPLIT_REFUSED (~0UL)
int split_driver_offered(void);
/* One GRANT_COPY between local (a kernel address, = guest-physical) and the peer's granted frame; 0 or -1 (refused). */
int grant_copy(u32 reference, int to_granted, u64 local, u32 offset, u32 length);
void event_notify(void);
void event_channel_init(void);      /* routes I/O APIC input 9 (ServiceVmHost.EventChannelGsi) to EVENT_VECTOR */
void event_channel_interrupt(void);
extern volatile int event_seen;

/* blkfront.c, blkback.c */
void blkfront_probe(int forge_once);
void blkback_serve(int forge_once) __attribute__((noreturn));
#endif

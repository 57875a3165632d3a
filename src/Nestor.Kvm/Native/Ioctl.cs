namespace Nestor.Kvm.Native;

/// <summary>KVM ioctl request numbers, computed as linux/kvm.h does with the _IO/_IOR/_IOW/_IOWR macros
/// (asm-generic/ioctl.h: direction in bits 30–31, size in 16–29, type 0xAE in 8–15, number in 0–7).</summary>
internal static class Ioctl
{
    private const uint KvmIo = 0xAE;
    private const uint None = 0, Write = 1, Read = 2;

    private static nuint Encode(uint direction, uint number, uint size) =>
        (nuint)((direction << 30) | (size << 16) | (KvmIo << 8) | number);

    // System ioctls (on /dev/kvm).
    public static readonly nuint GetApiVersion = Encode(None, 0x00, 0);
    public static readonly nuint CreateVm = Encode(None, 0x01, 0);
    public static readonly nuint GetMsrIndexList = Encode(Read | Write, 0x02, 4);
    public static readonly nuint CheckExtension = Encode(None, 0x03, 0);
    public static readonly nuint GetVcpuMmapSize = Encode(None, 0x04, 0);
    public static readonly nuint GetSupportedCpuid = Encode(Read | Write, 0x05, 8);

    // VM ioctls.
    public static readonly nuint CreateVcpu = Encode(None, 0x41, 0);
    public static readonly nuint SetUserMemoryRegion = Encode(Write, 0x46, 32);
    public static readonly nuint SetTssAddress = Encode(None, 0x47, 0);
    public static readonly nuint GetDirtyLog = Encode(Write, 0x42, 16);           // struct kvm_dirty_log
    public static readonly nuint ClearDirtyLog = Encode(Read | Write, 0xC0, 24);  // struct kvm_clear_dirty_log
    public static readonly nuint EnableCapability = Encode(Write, 0xA3, 104);     // struct kvm_enable_cap
    public static readonly nuint GetStatsFd = Encode(None, 0xCE, 0);
    public static readonly nuint CreateIrqChip = Encode(None, 0x60, 0);
    public static readonly nuint IrqLine = Encode(Write, 0x61, 8);           // struct kvm_irq_level
    public static readonly nuint GetIrqChip = Encode(Read | Write, 0x62, 520); // struct kvm_irqchip

    // vCPU ioctls.
    public static readonly nuint Run = Encode(None, 0x80, 0);
    public static readonly nuint GetRegs = Encode(Read, 0x81, 144);
    public static readonly nuint SetRegs = Encode(Write, 0x82, 144);
    public static readonly nuint GetSregs = Encode(Read, 0x83, 312);
    public static readonly nuint SetSregs = Encode(Write, 0x84, 312);
    public static readonly nuint Translate = Encode(Read | Write, 0x85, 24);
    public static readonly nuint GetMsrs = Encode(Read | Write, 0x88, 8);
    public static readonly nuint SetMsrs = Encode(Write, 0x89, 8);
    public static readonly nuint SetSignalMask = Encode(Write, 0x8B, 4);
    public static readonly nuint GetFpu = Encode(Read, 0x8C, 416);
    public static readonly nuint SetFpu = Encode(Write, 0x8D, 416);
    public static readonly nuint SetCpuid2 = Encode(Write, 0x90, 8);
}

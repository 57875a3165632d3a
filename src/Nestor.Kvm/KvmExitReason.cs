namespace Nestor.Kvm;

/// <summary>Why <c>KVM_RUN</c> returned to user space (<c>KVM_EXIT_*</c> in linux/kvm.h).</summary>
public enum KvmExitReason : uint
{
    Unknown = 0,
    Exception = 1,
    Io = 2,
    Hypercall = 3,
    Debug = 4,
    Halt = 5,
    Mmio = 6,
    InterruptWindowOpen = 7,
    Shutdown = 8,
    FailEntry = 9,
    /// <summary>KVM_RUN was interrupted by a signal (or <c>immediate_exit</c>) before the guest finished.</summary>
    Interrupted = 10,
    SetTpr = 11,
    TprAccess = 12,
    Nmi = 16,
    InternalError = 17,
    SystemEvent = 24,
    IoApicEndOfInterrupt = 26,
    HyperV = 27,
    X86ReadMsr = 29,
    X86WriteMsr = 30,
    DirtyRingFull = 31,
    X86BusLock = 33,
    Notify = 37,
    MemoryFault = 39,
}

/// <summary>Sub-reason of <see cref="KvmExitReason.InternalError"/> (<c>KVM_INTERNAL_ERROR_*</c>).</summary>
public enum KvmInternalError : uint
{
    /// <summary>KVM's instruction emulator could not emulate the instruction at RIP.</summary>
    Emulation = 1,
    /// <summary>An exception occurred while KVM was already delivering one (simultaneous exceptions).</summary>
    SimultaneousExceptions = 2,
    /// <summary>A VM exit happened while an event was being delivered through the guest's IDT.</summary>
    DeliveryEvent = 3,
    /// <summary>KVM could not handle an exit reason the hardware reported.</summary>
    UnexpectedExitReason = 4,
}

/// <summary>Capabilities queried with <c>KVM_CHECK_EXTENSION</c> (<c>KVM_CAP_*</c>). Only the ones Nestor reports or relies on.</summary>
public enum KvmCapability : uint
{
    InterruptController = 0,
    Halt = 1,
    UserMemory = 3,
    SetTssAddress = 4,
    ExtendedCpuid = 7,
    RecommendedVcpus = 9,
    MemorySlots = 10,
    MultiprocessorState = 14,
    CoalescedMmio = 15,
    SynchronousMmu = 16,
    SetGuestDebug = 23,
    VcpuEvents = 41,
    DebugRegisters = 50,
    Xsave = 55,
    TscControl = 60,
    MaximumVcpus = 66,
    ReadOnlyMemory = 81,
    ImmediateExit = 136,
    DisableExits = 143,
    NestedState = 157,
    ExceptionPayload = 164,
    UserSpaceMsr = 188,
    BinaryStatistics = 203,
    ExitOnEmulationFailure = 204,
    TripleFaultEvent = 218,
    AdjustClock = 39,
    ExtendedControlRegisters = 56,
    Xsave2 = 208,
    /// <summary>KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: the flags KVM_ENABLE_CAP takes (1 manual protect, 2 initially set).</summary>
    ManualDirtyLogProtect2 = 168,
    /// <summary>KVM_CAP_DIRTY_LOG_RING: the largest dirty ring per vCPU, in bytes (0: none).</summary>
    DirtyLogRing = 192,
    /// <summary>KVM_CAP_DIRTY_LOG_RING_ACQ_REL: the same with acquire/release ordering of the ring's entries.</summary>
    DirtyLogRingAcquireRelease = 223,
}

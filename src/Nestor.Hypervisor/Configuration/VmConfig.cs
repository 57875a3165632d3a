using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Configuration;

/// <summary>Which engine runs the vCPUs.</summary>
public enum EngineKind
{
    /// <summary>Hardware-assisted virtualization through Linux /dev/kvm.</summary>
    Kvm,
    /// <summary>Nestor's own x86-64 machine model (the software machine): runs every guest on any host.</summary>
    Sim,
}

/// <summary>What the guest's clock (its TSC, local APIC timer and platform timers) counts (<c>--clock</c>).</summary>
public enum GuestClock
{
    /// <summary>The software machine's own time: one cycle per retired instruction plus the time skipped while
    /// halted, at a nominal 1 GHz, so that a run repeats exactly (QEMU's <c>-icount shift=0</c>).</summary>
    Virtual,
    /// <summary>The host's monotonic time at the same nominal rate (QEMU TCG's default; KVM's TSC): guests that time
    /// themselves against the TSC run for as long in wall time as they would on hardware; runs do not repeat.</summary>
    Host,
}

/// <summary>How a kernel file is loaded.</summary>
public enum KernelFormat
{
    /// <summary>An ELF64 x86-64 executable, loaded by its program headers and entered at e_entry.</summary>
    Elf,
    /// <summary>Raw code, copied to the load address and entered there.</summary>
    Flat,
}

/// <summary>The kernel a VM boots: its bytes, how to load them, and a name for messages.</summary>
public sealed record KernelImageSource(string Name, byte[] Contents, KernelFormat Format, GuestPhysical? LoadAddress = null)
{
    /// <summary>The most bytes Nestor reads from a kernel file whatever the limit: a little less than the largest
    /// .NET array.</summary>
    public static readonly long LargestFile = Array.MaxLength - 1;

    /// <summary>Reads a kernel file, turning every way it can be unreadable into a <see cref="BadInputException"/>.
    /// Only a regular file is read (a device such as /dev/zero never ends, and a FIFO with no writer blocks whoever
    /// opens it), and it is checked before it is opened; a file larger than <paramref name="maximumBytes"/> (guest
    /// RAM, for the CLI) is refused before it is read; an ELF file is checked for its magic before the rest is read.</summary>
    /// <param name="maximumBytes">The largest file to accept, or null for <see cref="LargestFile"/>.</param>
    public static KernelImageSource FromFile(string path, KernelFormat format, GuestPhysical? loadAddress = null, ulong? maximumBytes = null)
    {
        var (kind, size, error) = HostFile.Stat(path);
        if (error != 0)
        {
            throw Unreadable(path, error);
        }
        if (kind != HostFileKind.Regular)
        {
            throw NotRegular(path, kind);
        }
        long limit = (long)Math.Min(maximumBytes ?? ulong.MaxValue, (ulong)LargestFile);
        CheckSize(path, size, limit, format, exactly: true);
        var (handle, openedSize, openedKind, openError) = HostFile.OpenRegularForReading(path);
        if (handle is null)
        {
            throw openError != 0 ? Unreadable(path, openError) : NotRegular(path, openedKind);
        }
        using (handle)
        {
            try
            {
                return Read(path, openedSize, format, loadAddress, limit, (buffer, offset) => RandomAccess.Read(handle, buffer, offset));
            }
            catch (IOException e)
            {
                throw new BadInputException($"kernel file '{path}' cannot be read: {e.Message}", null, e);
            }
        }
    }

    /// <summary>Reads at most the buffer's length from the file offset, returning how many bytes it read (0 at the
    /// end of the file).</summary>
    internal delegate int ReadAt(Span<byte> buffer, long offset);

    /// <summary>Reads a kernel of <paramref name="size"/> bytes (as stat said) through <paramref name="read"/>:
    /// the first four bytes first, to check an ELF file's magic before reading anything else, then the rest, up to
    /// <paramref name="limit"/> bytes whatever the size said (files in /proc say 0 and have contents; a file may
    /// grow while it is read).</summary>
    internal static KernelImageSource Read(string path, long size, KernelFormat format, GuestPhysical? loadAddress, long limit, ReadAt read)
    {
        CheckSize(path, size, limit, format, exactly: true);
        Span<byte> header = stackalloc byte[4];
        int total = ReadInto(header, 0, read);
        if (total == 0)
        {
            throw new BadInputException($"kernel file '{path}' is empty", "Build the kernel first, or give another file");
        }
        if (format == KernelFormat.Elf && !Boot.ElfImage.HasElfMagic(header[..total]))
        {
            throw new BadInputException($"'{path}' is not an ELF file (it does not start with 7f 45 4c 46)",
                "If it is raw machine code, add --flat (it is loaded at 0x100000 and entered there)");
        }
        CheckSize(path, total, limit, format, exactly: false);
        var buffer = new byte[(int)Math.Clamp(size, total, limit)];
        header[..total].CopyTo(buffer);
        Span<byte> probe = stackalloc byte[1];
        while (true)
        {
            if (total == buffer.Length)
            {
                // As long as stat said: one byte more tells the end of the file from a file longer than stat said,
                // which grows the buffer (within the limit) only then.
                if (ReadInto(probe, total, read) == 0)
                {
                    break;
                }
                CheckSize(path, (long)total + 1, limit, format, exactly: false);
                Array.Resize(ref buffer, (int)Math.Min(Math.Max((long)buffer.Length * 2, 4096), limit));
                buffer[total++] = probe[0];
                continue;
            }
            int n = ReadInto(buffer.AsSpan(total), total, read);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        if (total != buffer.Length)
        {
            Array.Resize(ref buffer, total);
        }
        return new KernelImageSource(path, buffer, format, loadAddress);
    }

    /// <summary>Fills <paramref name="destination"/> from file offset <paramref name="offset"/> unless the file
    /// ends first; returns how many bytes it read.</summary>
    private static int ReadInto(Span<byte> destination, long offset, ReadAt read)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = read(destination[done..], offset + done);
            if (n <= 0)
            {
                break;
            }
            done += n;
        }
        return done;
    }

    /// <param name="exactly">Whether <paramref name="size"/> is the file's size, or only how much has been read.</param>
    private static void CheckSize(string path, long size, long limit, KernelFormat format, bool exactly)
    {
        if (size <= limit)
        {
            return;
        }
        string what = limit == LargestFile ? $"the {Size.Format((ulong)limit)} Nestor reads at most" : $"guest RAM ({Size.Format((ulong)limit)})";
        throw new BadInputException(
            $"kernel file '{path}' is larger than {what}{(exactly ? $": it is {Size.Format((ulong)size)}" : "")}; nothing that large can be loaded, so it is not read",
            format == KernelFormat.Flat
                ? "Give the VM more memory with --memory, or check the path"
                : "Give the VM more memory with --memory, or strip the kernel (strip --strip-debug: debug sections are not loaded)");
    }

    private static BadInputException NotRegular(string path, HostFileKind kind) => kind == HostFileKind.Directory
        ? new BadInputException($"kernel '{path}' is a directory, not a file", "Give the path of the kernel file")
        : new BadInputException($"kernel '{path}' is {HostFile.Describe(kind)}, not a regular file",
            "Give the path of a kernel file: Nestor reads kernels only from regular files, whose reading ends " +
            "(a device such as /dev/zero never ends, and a FIFO waits for a writer)");

    private static BadInputException Unreadable(string path, int errno) => errno switch
    {
        2 => new BadInputException($"kernel file '{path}' does not exist", "Check the path"),
        20 => new BadInputException($"kernel file '{path}' does not exist (a part of its path is not a directory)", "Check the path"),
        13 => new BadInputException($"kernel file '{path}' cannot be read: permission denied",
            "Make it readable (chmod +r) or run as a user who may read it"),
        _ => new BadInputException($"kernel file '{path}' cannot be read: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)}", "Check the path"),
    };
}

/// <summary>Everything needed to build and run a VM. The CLI fills it in from options; library users build it directly.</summary>
public sealed class VmConfig
{
    /// <summary>Smallest guest RAM: the boot structures take the first 512 KiB and a kernel loads at 1 MiB.</summary>
    public const ulong MinimumMemory = 2UL << 20;

    /// <summary>Largest guest RAM the boot page tables cover (see <see cref="Memory.GuestMemoryLayout"/>).</summary>
    public const ulong MaximumMemory = 16UL << 30;

    /// <summary>The engine that runs the VM (<see cref="Engines.EngineFactory"/>): the software machine by default.</summary>
    public EngineKind Engine { get; init; } = EngineKind.Sim;

    /// <summary>How the software machine runs it: technique, memory virtualization, caches (ignored on KVM).</summary>
    public Techniques.SimOptions Sim { get; init; } = new();

    /// <summary>The most vCPUs a VM may have (<c>--cpus</c>): the MADT, fw_cfg and the APIC IDs have room for more,
    /// but the software machine interleaves its vCPUs on one host thread, so that more only slow each other down.</summary>
    public const int MaximumCpus = 16;

    /// <summary>vCPUs (<c>--cpus N</c>, 1 to <see cref="MaximumCpus"/>): vCPU 0 is the bootstrap processor, which
    /// boots the kernel; the others are application processors waiting for a start-up IPI (SDM Vol. 3A §8.4).</summary>
    public int Cpus { get; init; } = 1;

    /// <summary><c>--cpu-model intel|amd</c>: which processor the software machine is (CPUID's identity and the
    /// vendor's behaviours, docs/cpu-model.md "Processor models"); Intel by default. The software machine only: on KVM
    /// the processor is the host's.</summary>
    public Nestor.Machine.Processor.ProcessorModel CpuModel { get; init; } = Nestor.Machine.Processor.ProcessorModel.Intel;

    /// <summary><c>--deterministic</c>: the run must interleave its vCPUs, and so end, the same way every time; the
    /// software machine only (KVM's vCPUs run when the host schedules them).</summary>
    public bool Deterministic { get; init; }

    /// <summary><c>--clock virtual|host</c>: what the guest's time counts; null for the engine's own (the software
    /// machine's virtual time, KVM's host time).</summary>
    public GuestClock? Clock { get; init; }

    /// <summary>Guest RAM in bytes (default 64 MiB).</summary>
    public ulong MemoryBytes { get; init; } = 64UL << 20;

    /// <summary>The kernel command line passed in the boot-information block.</summary>
    public string CommandLine { get; init; } = "";

    public required KernelImageSource Kernel { get; init; }

    /// <summary>Boot by Multiboot v1 (32-bit entry) instead of the Nestor boot protocol; the software machine only.</summary>
    public bool Multiboot { get; init; }

    /// <summary>Multiboot modules (<c>--module FILE[,cmdline]</c>), in the order given; only with <see cref="Multiboot"/>.</summary>
    public IReadOnlyList<Boot.MultibootModule> Modules { get; init; } = [];

    /// <summary>Optional platform devices (<c>--device</c>: the VT-d unit, edu); only with <see cref="Multiboot"/>.</summary>
    public Devices.Platform.PlatformDevices PlatformDevices { get; init; } = Devices.Platform.PlatformDevices.None;

    /// <summary>Wall-clock limit for the run, or null for none.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>Run even when the host's capability probe says the engine cannot run this guest.</summary>
    public bool Force { get; init; }

    /// <summary>Where the guest's COM1 output goes (the terminal, a log file, a memory buffer).</summary>
    public Stream SerialOutput { get; init; } = Stream.Null;

    /// <summary>Where Nestor's own diagnostics about the guest go (unclaimed accesses, warnings).</summary>
    public TextWriter Diagnostics { get; init; } = TextWriter.Null;

    /// <summary>Disks, in the order given (<c>--disk FILE[,if=ata|virtio|assigned][,ro]</c>); docs/devices.md says
    /// where each interface appears in the guest.</summary>
    public IReadOnlyList<Devices.Storage.DiskConfig> Disks { get; init; } = [];

    /// <summary>A virtio-console (<c>--virtio-console</c>) in the virtio-mmio slot after the virtio-blk disks: what the
    /// guest transmits goes to <see cref="SerialOutput"/>, as COM1's output (docs/devices.md).</summary>
    public bool VirtioConsole { get; init; }

    /// <summary>A virtio-balloon (<c>--balloon</c>, issue 15) in the virtio-mmio slot after the disks and the console
    /// (docs/overcommit.md).</summary>
    public bool Balloon { get; init; }

    /// <summary>The balloon's first target (<c>num_pages</c>, 4 KiB pages) when <see cref="Balloon"/> is set.</summary>
    public uint BalloonTargetPages { get; init; }

    /// <summary>What the virtio-console's receive queue gives the guest; read without waiting when the guest makes
    /// receive buffers available, so a stream whose bytes are all there (a file, a test's memory).</summary>
    public Stream VirtioConsoleInput { get; init; } = Stream.Null;

    /// <summary>The /dev/kvm path (tests point it elsewhere to check the error messages).</summary>
    public string KvmDevicePath { get; init; } = Nestor.Kvm.KvmSystem.DefaultDevicePath;

    /// <summary>Checks the values that do not depend on the kernel.</summary>
    /// <exception cref="BadInputException">A value is out of range.</exception>
    public void Validate()
    {
        if (MemoryBytes < MinimumMemory || MemoryBytes > MaximumMemory)
        {
            // The exact count, however the user wrote it: "4095 bytes", never a rounded "4 KiB".
            throw new BadInputException(
                $"guest memory {Exact(MemoryBytes)} is out of range: it must be {Size.Format(MinimumMemory)} to {Size.Format(MaximumMemory)}",
                $"Give --memory between {Size.Format(MinimumMemory)} and {Size.Format(MaximumMemory)}, e.g. 64M");
        }
        if ((MemoryBytes & 0xFFF) != 0)
        {
            throw new BadInputException($"guest memory {Exact(MemoryBytes)} is not a whole number of 4 KiB pages",
                "Give --memory as a multiple of 4K, e.g. 64M");
        }
        if (Cpus < 1 || Cpus > MaximumCpus)
        {
            throw new BadInputException($"{Cpus} vCPUs is out of range: a VM has 1 to {MaximumCpus}",
                $"Give --cpus between 1 and {MaximumCpus}");
        }
        if (Cpus > 1 && Engine != EngineKind.Sim)
        {
            throw new BadInputException($"--cpus {Cpus} runs on the software machine only: the KVM engine starts one vCPU",
                "Add --engine sim, or drop --cpus");
        }
        if (Cpus > 1 && Techniques.TechniqueRules.SeveralVcpusRefusal(Sim.Technique, Sim.Memory) is { } refusal)
        {
            throw new BadInputException($"--cpus {Cpus}: {refusal.Message}", refusal.Hint);
        }
        if (CpuModel != Nestor.Machine.Processor.ProcessorModel.Intel && Engine != EngineKind.Sim)
        {
            throw new BadInputException($"--cpu-model {CpuModel.Name} chooses the software machine's processor: on KVM the guest sees the host's",
                "Add --engine sim, or drop --cpu-model");
        }
        if (Deterministic && Engine != EngineKind.Sim)
        {
            throw new BadInputException("--deterministic needs the software machine: KVM's vCPUs run as the host schedules them",
                "Add --engine sim, or drop --deterministic");
        }
        if (Clock == GuestClock.Virtual && Engine != EngineKind.Sim)
        {
            throw new BadInputException("--clock virtual is the software machine's instruction-counted time: on KVM the guest's TSC is the host's",
                "Add --engine sim, or drop --clock");
        }
        if (Clock == GuestClock.Host && Deterministic)
        {
            throw new BadInputException("--deterministic and --clock host do not go together: under host time a run depends on how fast the host runs it",
                "Drop --clock host (the default virtual clock repeats exactly), or drop --deterministic");
        }
        if (Timeout is { } t && t <= TimeSpan.Zero)
        {
            throw new BadInputException($"timeout {t.TotalSeconds} s is not positive", "Give --timeout in seconds, e.g. 10");
        }
    }

    /// <summary>A byte count with its exact number of bytes: "4095 bytes", "17179869184 bytes (16 GiB)".</summary>
    private static string Exact(ulong bytes)
    {
        string formatted = Size.Format(bytes);
        return formatted.EndsWith("bytes", StringComparison.Ordinal) || formatted.EndsWith("byte", StringComparison.Ordinal)
            ? formatted : $"{bytes} bytes ({formatted})";
    }
}

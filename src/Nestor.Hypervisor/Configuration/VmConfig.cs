using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Configuration;

/// <summary>Which engine runs the vCPUs.</summary>
public enum EngineKind
{
    /// <summary>Hardware-assisted virtualization through Linux /dev/kvm.</summary>
    Kvm,
    /// <summary>Nestor's own x86-64 machine model (the software machine; not in this release yet).</summary>
    Sim,
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
    /// <summary>Reads a kernel file, turning every way it can be unreadable into a <see cref="BadInputException"/>.</summary>
    public static KernelImageSource FromFile(string path, KernelFormat format, GuestPhysical? loadAddress = null)
    {
        if (Directory.Exists(path))
        {
            throw new BadInputException($"kernel '{path}' is a directory, not a file", "Give the path of the kernel file");
        }
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            throw new BadInputException($"kernel file '{path}' does not exist", "Check the path");
        }
        catch (DirectoryNotFoundException)
        {
            throw new BadInputException($"kernel file '{path}' does not exist (no such directory)", "Check the path");
        }
        catch (UnauthorizedAccessException)
        {
            throw new BadInputException($"kernel file '{path}' cannot be read: permission denied",
                "Make it readable (chmod +r) or run as a user who may read it");
        }
        catch (IOException e)
        {
            throw new BadInputException($"kernel file '{path}' cannot be read: {e.Message}", null, e);
        }
        if (bytes.Length == 0)
        {
            throw new BadInputException($"kernel file '{path}' is empty", "Build the kernel first, or give another file");
        }
        return new KernelImageSource(path, bytes, format, loadAddress);
    }
}

/// <summary>Everything needed to build and run a VM. The CLI fills it in from options; library users build it directly.</summary>
public sealed class VmConfig
{
    /// <summary>Smallest guest RAM: the boot structures take the first 512 KiB and a kernel loads at 1 MiB.</summary>
    public const ulong MinimumMemory = 2UL << 20;

    /// <summary>Largest guest RAM the boot page tables cover (see <see cref="Memory.GuestMemoryLayout"/>).</summary>
    public const ulong MaximumMemory = 16UL << 30;

    public EngineKind Engine { get; init; } = EngineKind.Kvm;

    /// <summary>Guest RAM in bytes (default 64 MiB).</summary>
    public ulong MemoryBytes { get; init; } = 64UL << 20;

    /// <summary>The kernel command line passed in the boot-information block.</summary>
    public string CommandLine { get; init; } = "";

    public required KernelImageSource Kernel { get; init; }

    /// <summary>Boot by Multiboot v1 (32-bit entry) instead of the Nestor boot protocol; the software machine only.</summary>
    public bool Multiboot { get; init; }

    /// <summary>Wall-clock limit for the run, or null for none.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>Run even when the host's capability probe says the engine cannot run this guest.</summary>
    public bool Force { get; init; }

    /// <summary>Where the guest's COM1 output goes (the terminal, a log file, a memory buffer).</summary>
    public Stream SerialOutput { get; init; } = Stream.Null;

    /// <summary>Where Nestor's own diagnostics about the guest go (unclaimed accesses, warnings).</summary>
    public TextWriter Diagnostics { get; init; } = TextWriter.Null;

    /// <summary>The /dev/kvm path (tests point it elsewhere to check the error messages).</summary>
    public string KvmDevicePath { get; init; } = Nestor.Kvm.KvmSystem.DefaultDevicePath;

    /// <summary>Checks the values that do not depend on the kernel.</summary>
    /// <exception cref="BadInputException">A value is out of range.</exception>
    public void Validate()
    {
        if (MemoryBytes < MinimumMemory || MemoryBytes > MaximumMemory)
        {
            throw new BadInputException(
                $"guest memory {Size.Format(MemoryBytes)} is out of range",
                $"Give --memory between {Size.Format(MinimumMemory)} and {Size.Format(MaximumMemory)}");
        }
        if ((MemoryBytes & 0xFFF) != 0)
        {
            throw new BadInputException($"guest memory {MemoryBytes} bytes is not a whole number of 4 KiB pages",
                "Give --memory as a multiple of 4K, e.g. 64M");
        }
        if (Timeout is { } t && t <= TimeSpan.Zero)
        {
            throw new BadInputException($"timeout {t.TotalSeconds} s is not positive", "Give --timeout in seconds, e.g. 10");
        }
    }
}

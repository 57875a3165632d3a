using Microsoft.Win32.SafeHandles;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Memory.Swapping;

/// <summary>The host's swap file for guest pages: 4 KiB slots in a file of at most <see cref="CapacityPages"/> pages,
/// written with <c>pwrite</c> and read back with <c>pread</c>, a freed slot reused first (so the file stays as small
/// as the most pages ever out at once). ESX keeps one such file per VM, sized to its max − min (Waldspurger, OSDI 2002,
/// §3.3, §6.1). Not thread-safe: the VMM of one VM uses it between that VM's slices.</summary>
public sealed class HostSwapFile : IDisposable
{
    private const int PageSize = 4096;
    private readonly SafeFileHandle handle;
    private readonly Stack<int> freeSlots = new();
    private readonly bool deleteOnDispose;
    private int nextSlot;

    /// <param name="path">The file; it is created (an existing file is refused: it may be another VM's).</param>
    /// <param name="capacityBytes">The most it may hold; past it a swap-out fails with <see cref="HostSwapException"/>.</param>
    /// <param name="deleteOnDispose">Remove the file when disposed (its contents mean nothing once the VM is gone).</param>
    public HostSwapFile(string path, ulong capacityBytes, bool deleteOnDispose = true)
    {
        if (capacityBytes < PageSize)
        {
            throw new BadInputException($"a host swap file of {capacityBytes} bytes cannot hold one 4 KiB page",
                "Give the swap file at least 4 KiB (ESX sizes it to the VM's max − min memory)");
        }
        Path = path;
        CapacityPages = (long)Math.Min(capacityBytes / PageSize, int.MaxValue);
        this.deleteOnDispose = deleteOnDispose;
        try
        {
            handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            throw new HostSwapException($"cannot create the host swap file {path}: {e.Message}",
                "Give a path in a writable directory where no file of that name exists", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new HostSwapException($"cannot create the host swap file {path}: {e.Message}", "Give a path in a directory you may write", e);
        }
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Pages the file may hold.</summary>
    public long CapacityPages { get; }

    /// <summary>Slots in use.</summary>
    public long UsedPages => nextSlot - freeSlots.Count;

    /// <summary>Bytes written and read so far.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Bytes read back so far.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Writes one page into a free slot; its number.</summary>
    /// <exception cref="HostSwapException">The file is full (its capacity, or the disk), or the write failed. No slot is
    /// taken then, and the caller keeps its page.</exception>
    public int Write(ReadOnlySpan<byte> page)
    {
        if (page.Length != PageSize)
        {
            throw new ArgumentException("a swap slot holds exactly one 4 KiB page", nameof(page));
        }
        bool recycled = freeSlots.TryPop(out int slot);
        if (!recycled)
        {
            if (nextSlot >= CapacityPages)
            {
                throw new HostSwapException($"the host swap file {Path} is full: {CapacityPages:N0} pages ({CapacityPages * PageSize >> 20} MiB) are out",
                    "Give the host more swap (ESX reserves max − min of every VM), or reclaim less by swapping");
            }
            slot = nextSlot;
        }
        try
        {
            RandomAccess.Write(handle, page, (long)slot * PageSize);
        }
        catch (IOException e)
        {
            if (recycled)
            {
                freeSlots.Push(slot);
            }
            throw new HostSwapException($"cannot write a page to the host swap file {Path}: {e.Message} (the disk may be full)",
                "Free space on the swap file's disk or give another --swap-file; the page stays in memory", e);
        }
        if (!recycled)
        {
            nextSlot++;
        }
        BytesWritten += PageSize;
        return slot;
    }

    /// <summary>Reads the page in <paramref name="slot"/> back.</summary>
    /// <exception cref="HostSwapException">The read failed or came back short: the page's bytes are not to be had.</exception>
    public void Read(int slot, Span<byte> page)
    {
        if ((uint)slot >= (uint)nextSlot)
        {
            throw new ArgumentOutOfRangeException(nameof(slot), $"swap slot {slot} was never written");
        }
        int done;
        try
        {
            done = RandomAccess.Read(handle, page, (long)slot * PageSize);
        }
        catch (IOException e)
        {
            throw new HostSwapException($"cannot read slot {slot} of the host swap file {Path}: {e.Message}", "The guest's page is lost; check the swap file's disk", e);
        }
        if (done != PageSize)
        {
            throw new HostSwapException($"slot {slot} of the host swap file {Path} came back short ({done} of {PageSize} bytes)",
                "The file was truncated behind Nestor's back; the guest's page is lost");
        }
        BytesRead += PageSize;
    }

    /// <summary>The page in <paramref name="slot"/> is no longer needed.</summary>
    public void Free(int slot) => freeSlots.Push(slot);

    public void Dispose()
    {
        handle.Dispose();
        if (deleteOnDispose)
        {
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
                // Left behind: it holds nothing a later run needs.
            }
        }
    }
}

/// <summary>The host swap file cannot take or give back a page (full, a disk error).</summary>
public sealed class HostSwapException(string message, string? advice = null, Exception? inner = null)
    : NestorException(message, advice, inner)
{
    public override FailureClass Class => FailureClass.HostUnsupported;
}

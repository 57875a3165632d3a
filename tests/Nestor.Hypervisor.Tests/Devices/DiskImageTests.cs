using System.Diagnostics;
using Nestor.Host;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Tests.Devices;

/// <summary>The raw disk image: each refusal's message and advice, the lock a second user meets, and what reads,
/// writes and flushes do to the file.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class DiskImageTests : IDisposable
{
    private const int Sector = IBlockBackend.SectorSize;

    /// <summary>An unprivileged user (nobody), for the permission checks: root passes every permission bit.</summary>
    private const uint Unprivileged = 65534;

    private readonly string directory;

    public DiskImageTests()
    {
        directory = Path.Combine(Path.GetTempPath(), $"nestor-disk-tests-{Guid.NewGuid():N}");
        Directory.CreateDirectory(directory);
        File.SetUnixFileMode(directory, (UnixFileMode)0x1ED); // 0755: the unprivileged user may look inside
    }

    public void Dispose() => Directory.Delete(directory, recursive: true);

    private string Image(long bytes, string name = "disk.img")
    {
        string path = Path.Combine(directory, name);
        using (var file = File.Create(path))
        {
            file.SetLength(bytes);
        }
        return path;
    }

    private static BadInputException Refused(string path, bool readOnly = false) =>
        Assert.Throws<BadInputException>(() => DiskImage.Open(path, readOnly).Dispose());

    /// <summary>Runs <paramref name="action"/> on a thread of its own with the unprivileged user's credentials (raw
    /// setresuid changes only the calling thread), which then ends.</summary>
    private static T AsUnprivileged<T>(Func<T> action)
    {
        T? result = default;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                ProcessCalls.SetThreadCredentials(Unprivileged, Unprivileged, []);
                result = action();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw failure;
        }
        return result!;
    }

    /// <summary>The file's bytes through an open file description of its own, which takes no lock (.NET's readers
    /// take flock(LOCK_SH), which the disk's exclusive lock refuses).</summary>
    private static byte[] FileBytes(string path, long offset, int length)
    {
        var (handle, error) = FileLockCalls.Open(path, writable: false);
        Assert.True(handle is not null, $"open failed with errno {error}");
        using (handle)
        {
            var bytes = new byte[length];
            Assert.Equal(length, RandomAccess.Read(handle, bytes, offset));
            return bytes;
        }
    }

    [Fact]
    public void A_missing_file_is_refused_with_how_to_make_one()
    {
        string path = Path.Combine(directory, "absent.img");
        var e = Refused(path);
        Assert.Equal($"disk '{path}' does not exist", e.Message);
        Assert.Contains($"truncate -s 64M {path}", e.Advice);
    }

    [Fact]
    public void A_directory_or_a_fifo_is_not_a_disk_image()
    {
        var e = Refused(directory);
        Assert.Equal($"disk '{directory}' is a directory, not a disk image file", e.Message);
        string fifo = Path.Combine(directory, "pipe");
        using (var mkfifo = Process.Start("mkfifo", fifo))
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }
        e = Refused(fifo);
        Assert.Equal($"disk '{fifo}' is a FIFO (named pipe), not a disk image file", e.Message);
    }

    [Fact]
    public void An_empty_file_and_a_file_of_part_sectors_are_refused_with_the_size_to_give()
    {
        string empty = Image(0, "empty.img");
        var e = Refused(empty);
        Assert.Equal($"disk '{empty}' is empty (0 bytes)", e.Message);
        Assert.Contains($"truncate -s 64M {empty}", e.Advice);

        string odd = Image(3 * Sector + 100, "odd.img");
        e = Refused(odd);
        Assert.Equal($"disk '{odd}' is {3 * Sector + 100} bytes, not a whole number of {Sector}-byte sectors", e.Message);
        Assert.Contains($"truncate -s {4 * Sector} {odd}", e.Advice);
    }

    [Fact]
    public void A_disk_beyond_lba48_is_refused_and_the_largest_lba48_disk_is_not()
    {
        // No file system here holds a sparse file of 2^57 bytes, so the size check is called with the size itself.
        long largest = DiskImage.MaximumSectors * Sector;
        DiskImage.CheckSize("big.img", largest);
        var e = Assert.Throws<BadInputException>(() => DiskImage.CheckSize("big.img", largest + Sector));
        Assert.Equal($"disk 'big.img' is {largest + Sector} bytes ({DiskImage.MaximumSectors + 1} sectors), more than the " +
                     $"{DiskImage.MaximumSectors} sectors ATA's 48-bit LBA can address", e.Message);
        Assert.Equal((1L << 48) - 1, DiskImage.MaximumSectors); // IDENTIFY words 100-103 hold at most 2^48 - 1
    }

    [Fact]
    public void A_file_the_user_cannot_write_is_refused_with_ro_as_the_cure_and_opens_with_ro()
    {
        string path = Image(8 * Sector);
        File.SetUnixFileMode(path, (UnixFileMode)0x1A4); // 0644, owned by root
        var e = AsUnprivileged(() => Assert.Throws<BadInputException>(() => DiskImage.Open(path, readOnly: false)));
        Assert.Equal($"disk '{path}' is not writable (Permission denied)", e.Message);
        Assert.Contains($"--disk {path},ro", e.Advice);
        long sectors = AsUnprivileged(() =>
        {
            using var disk = DiskImage.Open(path, readOnly: true);
            Assert.True(disk.ReadOnly);
            return disk.SectorCount;
        });
        Assert.Equal(8, sectors);
    }

    [Fact]
    public void A_file_the_user_cannot_read_is_refused_as_not_readable_with_or_without_ro()
    {
        string path = Image(8 * Sector);
        File.SetUnixFileMode(path, (UnixFileMode)0x180); // 0600, owned by root
        foreach (bool readOnly in new[] { false, true })
        {
            var e = AsUnprivileged(() => Assert.Throws<BadInputException>(() => DiskImage.Open(path, readOnly)));
            Assert.Equal($"disk '{path}' is not readable (Permission denied)", e.Message);
            Assert.Contains("readable", e.Advice);
        }
    }

    [Fact]
    public void A_disk_in_use_is_refused_naming_the_process_that_holds_it()
    {
        string path = Image(8 * Sector);
        // flock(1) takes the lock in its own process and holds it while its command runs (--close: the command does
        // not inherit the locked descriptor, so the lock dies with flock itself).
        using var holder = Process.Start(new ProcessStartInfo("flock", ["--exclusive", "--close", path, "sleep", "60"]))!;
        try
        {
            Assert.True(SpinWait.SpinUntil(() => FileLockCalls.LockHolder(Identity(path)) == holder.Id, TimeSpan.FromSeconds(10)),
                "flock(1) did not take its lock");
            var e = Refused(path);
            Assert.Equal($"disk '{path}' is in use by another process (pid {holder.Id})", e.Message);
            Assert.Contains("its own copy", e.Advice);
            e = Refused(path, readOnly: true);
            Assert.Equal($"disk '{path}' is in use by another process (pid {holder.Id})", e.Message);
        }
        finally
        {
            holder.Kill(entireProcessTree: true);
            holder.WaitForExit();
        }
        DiskImage.Open(path, readOnly: false).Dispose(); // the holder's death released it
    }

    private static FileIdentity Identity(string path)
    {
        var (handle, _) = FileLockCalls.Open(path, writable: false);
        using (handle)
        {
            return FileLockCalls.Identity(handle!);
        }
    }

    [Fact]
    public void Read_only_users_share_a_disk_and_a_writer_excludes_them_and_is_excluded_by_them()
    {
        string path = Image(8 * Sector);
        using (var first = DiskImage.Open(path, readOnly: true))
        using (var second = DiskImage.Open(path, readOnly: true))
        {
            var e = Refused(path);
            Assert.Equal($"disk '{path}' is in use by another process (pid {Environment.ProcessId}, this nestor: is the file given twice?)", e.Message);
        }
        using (var writer = DiskImage.Open(path, readOnly: false))
        {
            Assert.StartsWith($"disk '{path}' is in use by another process", Refused(path, readOnly: true).Message);
            Assert.StartsWith($"disk '{path}' is in use by another process", Refused(path).Message);
        }
        DiskImage.Open(path, readOnly: false).Dispose(); // Dispose released the lock
    }

    [Fact]
    public void Written_sectors_are_in_the_file_at_their_offsets_and_flush_syncs_them()
    {
        string path = Image(64 * Sector);
        var pattern = new byte[3 * Sector];
        new Random(13).NextBytes(pattern);
        using var disk = DiskImage.Open(path, readOnly: false);
        Assert.Equal(64, disk.SectorCount);
        Assert.Equal("disk.img", disk.Name);
        disk.Write(10, pattern);
        disk.Flush();
        Assert.Equal(1, disk.Syncs);
        Assert.Equal(pattern, FileBytes(path, 10 * Sector, pattern.Length));
        var back = new byte[pattern.Length];
        disk.Read(10, back);
        Assert.Equal(pattern, back);
        Assert.Equal(new byte[Sector], FileBytes(path, 9 * Sector, Sector)); // the sectors around it are untouched
        Assert.Equal(new byte[Sector], FileBytes(path, 13 * Sector, Sector));
        disk.Flush();
        Assert.Equal(2, disk.Syncs);
    }

    [Fact]
    public void Dispose_syncs_writes_not_yet_flushed_and_releases_the_lock()
    {
        string path = Image(8 * Sector);
        var disk = DiskImage.Open(path, readOnly: false);
        disk.Write(7, Enumerable.Repeat((byte)0x5A, Sector).ToArray());
        Assert.Equal(0, disk.Syncs);
        disk.Dispose();
        Assert.Equal(1, disk.Syncs);
        Assert.All(File.ReadAllBytes(path)[(7 * Sector)..], b => Assert.Equal(0x5A, b));
        var clean = DiskImage.Open(path, readOnly: false);
        clean.Dispose();
        Assert.Equal(0, clean.Syncs); // nothing written, nothing to sync
    }

    [Fact]
    public void Accesses_outside_the_disk_and_writes_to_a_read_only_disk_throw()
    {
        string path = Image(8 * Sector);
        using (var disk = DiskImage.Open(path, readOnly: false))
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => disk.Read(7, new byte[2 * Sector]));
            Assert.Throws<ArgumentOutOfRangeException>(() => disk.Write(-1, new byte[Sector]));
            Assert.Throws<ArgumentOutOfRangeException>(() => disk.Read(0, new byte[100]));
            Assert.Throws<ArgumentOutOfRangeException>(() => disk.Read(long.MaxValue, new byte[Sector]));
        }
        using (var disk = DiskImage.Open(path, readOnly: true))
        {
            Assert.Throws<InvalidOperationException>(() => disk.Write(0, new byte[Sector]));
            disk.Flush();
            Assert.Equal(0, disk.Syncs);
        }
    }

    [Fact]
    public void The_serial_number_is_the_same_for_one_file_and_fits_ata_s_twenty_characters()
    {
        string one = Image(8 * Sector, "one.img"), two = Image(8 * Sector, "two.img");
        string first, again, other;
        using (var disk = DiskImage.Open(one, readOnly: false))
        {
            first = disk.Serial;
        }
        using (var disk = DiskImage.Open(one, readOnly: true))
        {
            again = disk.Serial;
        }
        using (var disk = DiskImage.Open(two, readOnly: false))
        {
            other = disk.Serial;
        }
        Assert.Equal(first, again);
        Assert.NotEqual(first, other);
        Assert.InRange(first.Length, 1, 20);
        Assert.StartsWith("NESTOR-", first);
    }
    [Theory]
    [InlineData("disk.img", "disk.img", DiskInterface.Virtio, false)]
    [InlineData("disk.img,if=ata", "disk.img", DiskInterface.Ata, false)]
    [InlineData("/a/b.img,ro,if=assigned", "/a/b.img", DiskInterface.Assigned, true)]
    [InlineData("b.img,if=virtio,ro=off", "b.img", DiskInterface.Virtio, false)]
    [InlineData("b.img,ro=on", "b.img", DiskInterface.Virtio, true)]
    public void Disk_values_parse_into_a_file_an_interface_and_read_only(string text, string path, DiskInterface kind, bool readOnly)
    {
        var disk = DiskConfig.Parse(text);
        Assert.Equal((path, kind, readOnly), (disk.Path, disk.Interface, disk.ReadOnly));
        Assert.Null(disk.Backend);
    }

    [Theory]
    [InlineData("d.img,if=ide", "--disk d.img,if=ide: there is no disk interface 'ide'")]
    [InlineData("d.img,if", "--disk d.img,if: there is no disk interface ''")]
    [InlineData("d.img,ro=yes", "--disk d.img,ro=yes: ro takes no value but on or off, not 'yes'")]
    [InlineData("d.img,if=ata,if=virtio", "--disk d.img,if=ata,if=virtio: 'if' is given twice")]
    [InlineData("d.img,format=raw", "--disk d.img,format=raw: unknown option 'format=raw'")]
    [InlineData("", "--disk '' names no file")]
    public void Bad_disk_values_are_refused_naming_what_is_wrong(string text, string message)
    {
        var e = Assert.Throws<BadInputException>(() => DiskConfig.Parse(text));
        Assert.Equal(message, e.Message);
        Assert.NotNull(e.Advice);
    }
}

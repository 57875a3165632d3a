using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Persistence;

/// <summary>A disk the snapshot's VM had attached, by reference: where it was, how the guest saw it, and a SHA-256
/// of its content when the snapshot was taken. A snapshot holds no disk content (as QEMU's and Firecracker's do not):
/// the restored VM opens the same image, which must not have changed since.</summary>
public sealed record DiskReference(DiskInterface Interface, int Index, string Path, long Bytes, string Sha256);

/// <summary>What a snapshot file's header says (<see cref="SnapshotFile"/>).</summary>
/// <param name="FormatVersion">The file format's version.</param>
/// <param name="Engine">The engine the VM ran on.</param>
/// <param name="Technique">The VMM's technique (sim).</param>
/// <param name="Memory">Shadow or nested paging, null without a VMM.</param>
/// <param name="LargeNestedPages">2 MiB nested pages.</param>
/// <param name="MemoryBytes">Guest RAM.</param>
/// <param name="Fingerprint">SHA-256 of <see cref="Configuration"/>, in hex.</param>
/// <param name="InstructionsRetired">The vCPU's retired instructions when the snapshot was taken.</param>
/// <param name="Configuration">The configuration the VM was built from, one <c>key=value</c> a line.</param>
/// <param name="Disks">The disks by reference.</param>
/// <param name="Checksum">The CRC-64 stored at the end of the file (verified when read).</param>
/// <param name="FileBytes">The file's length.</param>
/// <param name="MemoryFile">Where the RAM is when it is not in this file (format version 2), else null.</param>
public sealed record SnapshotHeader(ushort FormatVersion, EngineKind Engine, Technique Technique, MemoryVirtualization? Memory,
    bool LargeNestedPages, ulong MemoryBytes, string Fingerprint, long InstructionsRetired, string Configuration,
    IReadOnlyList<DiskReference> Disks, ulong Checksum, long FileBytes, MemoryFileReference? MemoryFile = null)
{
    /// <summary>The technique as <c>nestor run --technique/--mmu</c> name it: native, trap, bt, pv, hw+nested, hw+shadow.</summary>
    public string TechniqueName => new SimOptions { Technique = Technique, Memory = Memory }.Name;
}

/// <summary>What a save wrote: the state file, the memory file if the RAM went to one, and the snapshot as it was
/// taken (its body whole, RAM included), which <see cref="SnapshotFile.Restore(SnapshotContents, Vm, IEngine)"/> takes.</summary>
public sealed record SavedSnapshot(string Path, long Bytes, MemoryFileReference? MemoryFile, SnapshotContents Contents);

/// <summary>A snapshot taken in memory (<see cref="SnapshotFile.Take"/>), not yet written: the VM's and engine's
/// sections, the disks by reference, and the contents a restore takes.</summary>
public sealed record TakenSnapshot(Vm Vm, IEngine Engine, byte[] Body, List<DiskReference> Disks, SnapshotContents Contents);

/// <summary>A snapshot read from a file: the header and the VM's sections (<see cref="VmSnapshot"/>).</summary>
public sealed record SnapshotContents(SnapshotHeader Header, byte[] Body)
{
    /// <summary>The body's sections: tag, layout version, length.</summary>
    public IReadOnlyList<(string Tag, ushort Version, uint Length)> Sections => SnapshotReader.Sections(Body);
}

/// <summary>Nestor's snapshot file: a header that says what was saved and of which VM, the sections of
/// <see cref="VmSnapshot"/>, and a CRC-64 over everything before it (<see cref="Crc64"/>, Firecracker's polynomial).
/// Layout, little-endian (docs/migration.md):
/// <code>
/// magic "NESTORSN" | u16 format version | u16 0 | u64 file length (with the CRC)
/// u8 engine (0 kvm, 1 sim) | u8 technique | u8 memory virtualization (0 none, 1 shadow, 2 nested) | u8 2 MiB nested pages
/// u64 guest RAM | 32 bytes SHA-256 of the configuration text | i64 instructions retired
/// u32 length + UTF-8 configuration text (key=value lines)
/// u32 disk count, each: u8 interface, u8 index, u32 length + UTF-8 path, i64 bytes, 32 bytes SHA-256
/// (version 2) u8 memory file (0 none: the RAM section holds the pages; 1: u32 length + UTF-8 path, i64 bytes, 32 bytes SHA-256)
/// u64 length + the sections ("NSNP", container version, then tag/version/length/fields each)
/// u64 CRC-64 of all the bytes before it
/// </code>
/// Reading checks, in this order, so that the refusal names the first thing wrong: the magic, the format version
/// (a newer one is refused before its checksum, whose place it may have moved), the length (truncated), the
/// CRC-64 (corrupted); restoring then checks the engine, the configuration (memory size, technique, then the rest)
/// and every disk's content hash before any state of the VM is touched.</summary>
public static class SnapshotFile
{
    /// <summary>The first eight bytes of a snapshot file.</summary>
    public static ReadOnlySpan<byte> Magic => "NESTORSN"u8;

    /// <summary>The newest format version this Nestor writes and reads.</summary>
    /// <remarks>Version 2 (issue 16) added the memory-file field after the disks, and the KVM engine's
    /// <c>KVMS</c> section; version 1 files are still read.</remarks>
    public const ushort FormatVersion = 2;

    /// <summary>Bytes before the engine byte: magic, version, reserved, length.</summary>
    private const int PrefixBytes = 20;

    private const string CpuModelKey = "cpu-model=";

    /// <summary>The processor model a configuration text names (<c>intel</c> when it names none).</summary>
    public static string CpuModelOf(string configuration) =>
        configuration.Split('\n').FirstOrDefault(l => l.StartsWith(CpuModelKey, StringComparison.Ordinal)) is { } line
            ? line[CpuModelKey.Length..]
            : Nestor.Machine.Processor.ProcessorModel.Intel.Name;

    /// <summary>The configuration of <paramref name="vm"/> run by <paramref name="options"/> as text, one
    /// <c>key=value</c> a line: everything a restore must match for the saved state to mean the same thing.</summary>
    public static string ConfigurationText(Vm vm, SimOptions? options)
    {
        var c = vm.Config;
        var text = new StringBuilder();
        text.Append("kernel=").Append(c.Kernel.Name).Append(" sha256=").Append(Convert.ToHexStringLower(SHA256.HashData(c.Kernel.Contents))).Append('\n');
        text.Append("kernel-format=").Append(c.Kernel.Format).Append(c.Kernel.LoadAddress is { } load ? $" load=0x{load.Value:x}" : "").Append('\n');
        text.Append("multiboot=").Append(c.Multiboot ? "yes" : "no").Append('\n');
        foreach (var module in c.Modules)
        {
            text.Append("module=").Append(module.CommandLine).Append(" sha256=").Append(Convert.ToHexStringLower(SHA256.HashData(module.Contents))).Append('\n');
        }
        text.Append("cmdline=").Append(c.CommandLine).Append('\n');
        text.Append("memory=").Append(c.MemoryBytes).Append('\n');
        text.Append("engine=").Append(c.Engine == EngineKind.Sim ? "sim" : "kvm").Append('\n');
        // Only a model other than the default is written, so that snapshots taken before models existed still match.
        if (c.CpuModel != Nestor.Machine.Processor.ProcessorModel.Intel)
        {
            text.Append(CpuModelKey).Append(c.CpuModel.Name).Append('\n');
        }
        if (options is not null)
        {
            text.Append("technique=").Append(options.Name).Append('\n');
            text.Append("nested-pages=").Append(options.LargeNestedPages ? "2m" : "4k").Append('\n');
        }
        text.Append("virtio-console=").Append(c.VirtioConsole ? "yes" : "no").Append('\n');
        foreach (var disk in DisksOf(vm))
        {
            text.Append("disk=").Append(disk.Place).Append(' ').Append(PathOf(disk)).Append(disk.Backend.ReadOnly ? " ro" : "").Append('\n');
        }
        return text.ToString();
    }

    /// <summary>The snapshot of <paramref name="vm"/> and <paramref name="engine"/> (between runs) as file bytes.</summary>
    /// <remarks>On KVM the engine's section is <c>KVMS</c> (<see cref="State.KvmVcpuExtendedState"/>): what KVM's
    /// vCPU holds beyond the registers the VM's <c>CPU0</c> section keeps, read after each run (XSAVE, the MSRs
    /// the guest changed, the in-kernel LAPIC, events in flight, the kvmclock) and loaded before the next.</remarks>
    /// <exception cref="Errors.BadInputException">An engine whose state cannot be saved.</exception>
    public static byte[] Encode(Vm vm, IEngine engine) => Assemble(vm, engine, Capture(vm, engine), DiskReferences(vm), memoryFile: null);

    // The VM's sections, then the engine's: the software machine's VMM, or KVM's vCPU state beyond the registers.
    private static byte[] Capture(Vm vm, IEngine engine) => engine switch
    {
        SimEngine sim => VmSnapshot.Capture(vm, sim),
        KvmEngine kvm => VmSnapshot.Capture(vm, kvm.ExtendedStateOf(vm)),
        _ => throw new Errors.BadInputException($"snapshots of a VM on engine {engine.Name} are not implemented", "Run the VM on --engine sim (the default)"),
    };

    private static List<DiskReference> DiskReferences(Vm vm) =>
    [
        .. DisksOf(vm).Select(disk =>
        {
            var (bytes, hash) = Hash(disk.Backend);
            return new DiskReference(disk.Interface, disk.Index, PathOf(disk), bytes, hash);
        }),
    ];

    // The file's bytes around a body.
    private static byte[] Assemble(Vm vm, IEngine engine, byte[] body, List<DiskReference> disks, MemoryFileReference? memoryFile)
    {
        var sim = engine as SimEngine;
        var options = sim?.Options ?? new SimOptions();
        string configuration = ConfigurationText(vm, sim?.Options);
        using var stream = new MemoryStream();
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write(Magic);
        w.Write(FormatVersion);
        w.Write((ushort)0);
        w.Write(0UL); // the length, backpatched
        w.Write((byte)(sim is null ? EngineKind.Kvm : EngineKind.Sim));
        w.Write((byte)options.Technique);
        w.Write(options.EffectiveMemory switch { MemoryVirtualization.Shadow => (byte)1, MemoryVirtualization.Nested => (byte)2, _ => (byte)0 });
        w.Write(options.LargeNestedPages);
        w.Write(vm.Config.MemoryBytes);
        w.Write(SHA256.HashData(Encoding.UTF8.GetBytes(configuration)));
        w.Write(vm.Vcpus[0].State.InstructionsRetired);
        WriteText(w, configuration);
        w.Write(disks.Count);
        foreach (var disk in disks)
        {
            w.Write((byte)disk.Interface);
            w.Write((byte)disk.Index);
            WriteText(w, disk.Path);
            w.Write(disk.Bytes);
            w.Write(Convert.FromHexString(disk.Sha256));
        }
        w.Write(memoryFile is null ? (byte)0 : (byte)1);
        if (memoryFile is not null)
        {
            WriteText(w, memoryFile.Path);
            w.Write(memoryFile.Bytes);
            w.Write(Convert.FromHexString(memoryFile.Sha256));
        }
        w.Write((ulong)body.Length);
        w.Write(body);
        w.Flush();
        long total = stream.Length + sizeof(ulong);
        var file = new byte[total];
        stream.ToArray().CopyTo(file, 0);
        BinaryPrimitives.WriteInt64LittleEndian(file.AsSpan(12), total);
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan((int)(total - 8)), Crc64.Compute(file.AsSpan(0, (int)(total - 8))));
        return file;
    }

    /// <summary>Saves the snapshot of <paramref name="vm"/> to <paramref name="path"/>: written to a temporary file
    /// beside it, synced, then renamed over it, so that a save that fails (a full disk, a kill) leaves whatever
    /// was at <paramref name="path"/> before as it was.</summary>
    /// <returns>The bytes written.</returns>
    public static long Save(string path, Vm vm, IEngine engine) => Write(path, Encode(vm, engine));

    /// <summary>Takes the snapshot of <paramref name="vm"/> and <paramref name="engine"/> (between runs) in memory:
    /// what <see cref="Save(TakenSnapshot, string, string?)"/> writes, and what a fresh engine can be restored from
    /// whether or not the write succeeds.</summary>
    public static TakenSnapshot Take(Vm vm, IEngine engine)
    {
        byte[] body = Capture(vm, engine);
        var disks = DiskReferences(vm);
        return new TakenSnapshot(vm, engine, body, disks, Decode(Assemble(vm, engine, body, disks, memoryFile: null)));
    }

    /// <summary>Saves the snapshot of <paramref name="vm"/> to <paramref name="path"/>, its RAM to
    /// <paramref name="memoryFile"/> if given (<see cref="Save(TakenSnapshot, string, string?)"/>).</summary>
    public static SavedSnapshot Save(string path, Vm vm, IEngine engine, string? memoryFile) => Save(Take(vm, engine), path, memoryFile);

    /// <summary>Writes <paramref name="taken"/> to <paramref name="path"/> and, when <paramref name="memoryFile"/> is
    /// given, its RAM to that file instead (<see cref="MemoryFile"/>: Firecracker's layout, a state file and a memory
    /// file). Each is written to a temporary file beside its final name, synced, and only then renamed over it, the
    /// memory file first, so that a save that fails (a full disk, a read-only directory) leaves no partial file and
    /// what was at both names before.</summary>
    /// <exception cref="Errors.BadInputException">The files could not be written; nothing was left behind.</exception>
    public static SavedSnapshot Save(TakenSnapshot taken, string path, string? memoryFile)
    {
        var (vm, engine, body, disks) = (taken.Vm, taken.Engine, taken.Body, taken.Disks);
        if (memoryFile is null)
        {
            long bytes = Write(path, Assemble(vm, engine, body, disks, memoryFile: null));
            return new SavedSnapshot(path, bytes, null, taken.Contents);
        }
        string fullState = System.IO.Path.GetFullPath(path), fullMemory = System.IO.Path.GetFullPath(memoryFile);
        if (fullState == fullMemory)
        {
            throw new Errors.BadInputException($"the snapshot and its memory file are both '{path}'", "Give the memory file another path than the snapshot's");
        }
        var split = MemoryFile.Take(body);
        string temporaryMemory = Temporary(fullMemory), temporaryState = Temporary(fullState);
        try
        {
            var reference = MemoryFile.Write(split, temporaryMemory, fullMemory);
            byte[] state = Assemble(vm, engine, split.StateBody, disks, reference);
            WriteNew(temporaryState, state);
            File.Move(temporaryMemory, fullMemory, overwrite: true);
            File.Move(temporaryState, fullState, overwrite: true);
            return new SavedSnapshot(path, state.Length, reference, taken.Contents);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporaryMemory);
            TryDelete(temporaryState);
            throw new Errors.BadInputException($"cannot write the snapshot '{path}' and its memory file '{memoryFile}': {e.Message}",
                "Give writable paths in directories with room for them (nothing was written there)");
        }
    }

    /// <summary>Writes snapshot bytes (<see cref="Encode"/>) to <paramref name="path"/> as <see cref="Save(string, Vm, IEngine)"/> does.</summary>
    public static long Write(string path, byte[] file)
    {
        string full = System.IO.Path.GetFullPath(path);
        string temporary = Temporary(full);
        try
        {
            WriteNew(temporary, file);
            File.Move(temporary, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary);
            throw new Errors.BadInputException($"cannot write the snapshot '{path}': {e.Message}",
                "Give a writable path in a directory with room for it (nothing was written there)");
        }
        return file.Length;
    }

    /// <summary>The temporary name a file is written under before it is renamed to <paramref name="full"/>.</summary>
    public static string Temporary(string full) => full + $".{Environment.ProcessId}.partial";

    private static void WriteNew(string temporary, byte[] file)
    {
        using var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write);
        stream.Write(file);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>Reads and verifies a snapshot file (magic, version, length, CRC-64); does not restore it.</summary>
    /// <exception cref="SnapshotFormatException">Which of those is wrong.</exception>
    public static SnapshotContents Read(string path)
    {
        byte[] file;
        try
        {
            file = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Errors.BadInputException($"cannot read the snapshot '{path}': {e.Message}", "Give the path of a snapshot file nestor wrote");
        }
        return Decode(file);
    }

    /// <summary>Verifies and parses snapshot file bytes.</summary>
    /// <exception cref="SnapshotFormatException">Not a snapshot, newer, truncated or corrupted.</exception>
    public static SnapshotContents Decode(byte[] file)
    {
        if (file.Length < Magic.Length || !file.AsSpan(0, Magic.Length).SequenceEqual(Magic))
        {
            throw new SnapshotFormatException(file.Length < Magic.Length && Magic.StartsWith(file)
                ? $"the snapshot is truncated: {file.Length} bytes, fewer than its header"
                : "not a Nestor snapshot file (it does not start with \"NESTORSN\")",
                file.Length < Magic.Length && Magic.StartsWith(file) ? SnapshotRefusal.Truncated : SnapshotRefusal.Invalid,
                "Give the path of a file 'nestor run --snapshot-at' or '--snapshot-on-signal' wrote");
        }
        if (file.Length < PrefixBytes)
        {
            throw new SnapshotFormatException($"the snapshot is truncated: {file.Length} bytes, fewer than its {PrefixBytes}-byte header",
                SnapshotRefusal.Truncated, "The save did not finish, or the copy was cut short: take the snapshot again");
        }
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(8));
        if (version > FormatVersion)
        {
            throw new SnapshotFormatException($"the snapshot's format version is {version}, newer than this Nestor reads ({FormatVersion})",
                SnapshotRefusal.NewerVersion, "Restore it with the Nestor that took it, or a newer one");
        }
        long declared = BinaryPrimitives.ReadInt64LittleEndian(file.AsSpan(12));
        if (declared > file.Length)
        {
            throw new SnapshotFormatException($"the snapshot is truncated: its header declares {declared:N0} bytes and the file has {file.Length:N0}",
                SnapshotRefusal.Truncated, "The save did not finish, or the copy was cut short: take the snapshot again");
        }
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(file.Length - 8));
        ulong computed = Crc64.Compute(file.AsSpan(0, file.Length - 8));
        if (declared != file.Length || stored != computed)
        {
            throw new SnapshotFormatException(declared != file.Length
                ? $"the snapshot is corrupted: its header declares {declared:N0} bytes and the file has {file.Length:N0}"
                : $"the snapshot is corrupted: its CRC-64 is 0x{stored:x16} and its bytes give 0x{computed:x16}",
                SnapshotRefusal.Corrupted, "The file was changed after it was written: restore an intact copy, or take the snapshot again");
        }
        try
        {
            using var r = new BinaryReader(new MemoryStream(file, PrefixBytes, file.Length - PrefixBytes - 8), Encoding.UTF8);
            var engine = (EngineKind)r.ReadByte();
            var technique = (Technique)r.ReadByte();
            MemoryVirtualization? memory = r.ReadByte() switch { 0 => null, 1 => MemoryVirtualization.Shadow, 2 => MemoryVirtualization.Nested, var m => throw Bad($"memory virtualization {m}") };
            bool large = r.ReadBoolean();
            if (!Enum.IsDefined(engine) || !Enum.IsDefined(technique))
            {
                throw Bad($"engine {(byte)engine} or technique {(byte)technique}");
            }
            ulong memoryBytes = r.ReadUInt64();
            string fingerprint = Convert.ToHexStringLower(r.ReadBytes(32));
            long instructions = r.ReadInt64();
            string configuration = ReadText(r);
            int disks = r.ReadInt32();
            if (disks is < 0 or > 64)
            {
                throw Bad($"{disks} disks");
            }
            var references = new List<DiskReference>();
            for (int i = 0; i < disks; i++)
            {
                var kind = (DiskInterface)r.ReadByte();
                int index = r.ReadByte();
                string path = ReadText(r);
                long bytes = r.ReadInt64();
                references.Add(new DiskReference(kind, index, path, bytes, Convert.ToHexStringLower(r.ReadBytes(32))));
            }
            MemoryFileReference? memoryFile = null;
            if (version >= 2)
            {
                switch (r.ReadByte())
                {
                    case 0:
                        break;
                    case 1:
                        string path = ReadText(r);
                        long bytes = r.ReadInt64();
                        memoryFile = new MemoryFileReference(path, bytes, Convert.ToHexStringLower(r.ReadBytes(32)));
                        break;
                    case var m:
                        throw Bad($"memory file kind {m}");
                }
            }
            ulong bodyLength = r.ReadUInt64();
            if (bodyLength != (ulong)(r.BaseStream.Length - r.BaseStream.Position))
            {
                throw Bad($"a body of {bodyLength} bytes where {r.BaseStream.Length - r.BaseStream.Position} remain");
            }
            byte[] body = r.ReadBytes((int)bodyLength);
            return new SnapshotContents(new SnapshotHeader(version, engine, technique, memory, large, memoryBytes, fingerprint, instructions,
                configuration, references, stored, file.Length, memoryFile), body);
        }
        catch (EndOfStreamException)
        {
            throw Bad("a header that ends before its fields");
        }
    }

    /// <summary>Restores the snapshot at <paramref name="path"/> into <paramref name="vm"/> (fresh, built from the same
    /// configuration) and <paramref name="engine"/> (fresh, of the same options), whose next run continues it.</summary>
    /// <param name="memoryFile">Where the memory file is, if it is not where the snapshot recorded it (moved with
    /// the state file); ignored for a snapshot that holds its RAM.</param>
    public static SnapshotHeader Restore(string path, Vm vm, IEngine engine, string? memoryFile = null)
    {
        var contents = Read(path);
        Restore(contents, vm, engine, memoryFile);
        return contents.Header;
    }

    /// <summary>Checks that <paramref name="contents"/> fit <paramref name="vm"/> and <paramref name="engine"/> —
    /// the engine, the memory size, the technique, the rest of the configuration, the disks' content — and only then
    /// restores the state.</summary>
    /// <exception cref="SnapshotFormatException">Which check failed, naming what differs.</exception>
    public static void Restore(SnapshotContents contents, Vm vm, IEngine engine) => Restore(contents, vm, engine, null);

    /// <summary>As <see cref="Restore(SnapshotContents, Vm, IEngine)"/>; a snapshot whose RAM is in a memory file has
    /// it read from <paramref name="memoryFile"/> (or the path it recorded) and checked, after the configuration and
    /// before any state is touched.</summary>
    public static void Restore(SnapshotContents contents, Vm vm, IEngine engine, string? memoryFile)
    {
        var h = contents.Header;
        string engineName = h.Engine == EngineKind.Sim ? "sim" : "kvm";
        var sim = engine as SimEngine;
        if (h.Engine == EngineKind.Sim ? sim is null : engine is not KvmEngine)
        {
            throw new SnapshotFormatException($"the snapshot was taken on engine {engineName}, and this VM runs on {engine.Name}",
                SnapshotRefusal.WrongEngine, $"Restore it with --engine {engineName}");
        }
        if (h.MemoryBytes != vm.Config.MemoryBytes)
        {
            throw new SnapshotFormatException(
                $"wrong configuration: the snapshot's VM has {h.MemoryBytes >> 20} MiB of memory ({h.MemoryBytes:N0} bytes), this one {vm.Config.MemoryBytes >> 20} MiB ({vm.Config.MemoryBytes:N0} bytes)",
                SnapshotRefusal.WrongConfiguration, $"Restore it with --memory {h.MemoryBytes >> 20}M");
        }
        var o = sim?.Options ?? new SimOptions();
        if (h.Technique != o.Technique || h.Memory != o.EffectiveMemory || h.LargeNestedPages != o.LargeNestedPages)
        {
            throw new SnapshotFormatException(
                $"wrong configuration: the snapshot was taken under technique {h.TechniqueName}{(h.LargeNestedPages ? " with 2 MiB nested pages" : "")}, and this VM runs {o.Name}{(o.LargeNestedPages ? " with 2 MiB nested pages" : "")}",
                SnapshotRefusal.WrongConfiguration, "Restore it with the --technique, --mmu and --nested-pages it was taken with ('nestor snapshot info FILE' shows them)");
        }
        string savedModel = CpuModelOf(h.Configuration);
        if (savedModel != vm.Config.CpuModel.Name)
        {
            throw new SnapshotFormatException(
                $"wrong configuration: the snapshot was taken on the {savedModel} processor model, and this VM's is {vm.Config.CpuModel.Name} (a guest that has read CPUID cannot change vendor)",
                SnapshotRefusal.WrongConfiguration, $"Restore it with --cpu-model {savedModel}");
        }
        string configuration = ConfigurationText(vm, sim?.Options);
        if (configuration != h.Configuration)
        {
            var saved = h.Configuration.Split('\n');
            var now = configuration.Split('\n');
            int at = 0;
            while (at < Math.Min(saved.Length, now.Length) && saved[at] == now[at])
            {
                at++;
            }
            string then = at < saved.Length && saved[at].Length > 0 ? saved[at] : "(nothing)";
            string here = at < now.Length && now[at].Length > 0 ? now[at] : "(nothing)";
            throw new SnapshotFormatException($"wrong configuration: the snapshot's VM had {then}, this one has {here}",
                SnapshotRefusal.WrongConfiguration, "Restore it with the kernel, options and disks it was taken with ('nestor snapshot info FILE' shows them)");
        }
        foreach (var (reference, disk) in h.Disks.Zip(DisksOf(vm)))
        {
            var (bytes, hash) = Hash(disk.Backend);
            if (bytes != reference.Bytes || hash != reference.Sha256)
            {
                throw new SnapshotFormatException(
                    $"the disk '{reference.Path}' ({disk.Place}) changed since the snapshot: it had {reference.Bytes:N0} bytes with SHA-256 {reference.Sha256}, and has {bytes:N0} bytes with SHA-256 {hash}",
                    SnapshotRefusal.DiskChanged, "Restore the image as it was when the snapshot was taken (a copy made then), or take a new snapshot");
            }
        }
        byte[] body = h.MemoryFile is { } memory ? MemoryFile.Join(contents.Body, memory, memoryFile ?? memory.Path) : contents.Body;
        if (sim is not null)
        {
            VmSnapshot.Restore(vm, body, sim);
        }
        else if (h.FormatVersion < 2)
        {
            VmSnapshot.Restore(vm, body); // a KVM snapshot of format 1 holds the registers only
        }
        else
        {
            // KVM: the next run loads the registers with KVM_SET_REGS/SREGS, then this state (XSAVE, MSRs, LAPIC,
            // events, clock). Read into a fresh value first, so a refused section leaves the engine's as it was.
            var state = new State.KvmVcpuExtendedState();
            VmSnapshot.Restore(vm, body, state);
            ((KvmEngine)engine).ExtendedStateOf(vm).CopyFrom(state);
        }
    }

    /// <summary>Every disk of the VM: the ATA and assigned ones it lists, and the virtio-blk devices in its virtio-mmio
    /// slots (which it does not list), by interface and place.</summary>
    private static List<AttachedDisk> DisksOf(Vm vm) =>
    [
        .. vm.Disks.Concat(Devices.Virtio.VirtioSlots.Of(vm)
                .Where(t => t.Device is Devices.Virtio.Block.VirtioBlock)
                .Select(t => new AttachedDisk(((Devices.Virtio.Block.VirtioBlock)t.Device).Backend, DiskInterface.Virtio, t.Slot, new DiskStatistics())))
            .OrderBy(d => d.Interface).ThenBy(d => d.Index),
    ];

    /// <summary>Where a disk's image is: its file's full path, or the backend's name (an in-memory disk).</summary>
    private static string PathOf(AttachedDisk disk) => disk.Backend is DiskImage image ? System.IO.Path.GetFullPath(image.Path) : disk.Backend.Name;

    /// <summary>The disk's size and SHA-256, read through its backend (what the guest would read, written or not
    /// yet flushed).</summary>
    private static (long Bytes, string Sha256) Hash(IBlockBackend backend)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        const int chunkSectors = 2048;
        var buffer = new byte[chunkSectors * IBlockBackend.SectorSize];
        for (long sector = 0; sector < backend.SectorCount; sector += chunkSectors)
        {
            int count = (int)Math.Min(chunkSectors, backend.SectorCount - sector);
            var span = buffer.AsSpan(0, count * IBlockBackend.SectorSize);
            backend.Read(sector, span);
            sha.AppendData(span);
        }
        return (backend.SectorCount * IBlockBackend.SectorSize, Convert.ToHexStringLower(sha.GetHashAndReset()));
    }

    private static void WriteText(BinaryWriter w, string text) => BinaryText.Write(w, text);

    private static string ReadText(BinaryReader r) => BinaryText.Read(r, Bad);

    // The CRC matched, so the writer wrote this: a Nestor of the same format version that wrote something else.
    private static SnapshotFormatException Bad(string what) => new($"the snapshot's header holds {what}, which this Nestor does not write");

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}

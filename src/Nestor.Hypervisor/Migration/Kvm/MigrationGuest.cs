using System.Globalization;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Migration.Kvm;

/// <summary>What a <see cref="MigrationGuest"/> does: <paramref name="Pages"/> pages from
/// <see cref="MigrationGuest.AreaStart"/>, each with a 64-bit counter at its start, incremented once a pass for
/// <paramref name="Passes"/> passes, with <paramref name="Spin"/> iterations of an empty loop after each pass (the
/// lower the spin, the higher the dirty rate).</summary>
public sealed record MigrationWorkload(long Pages, long Passes, long Spin)
{
    /// <summary>The command-line form <see cref="Parse"/> reads: <c>pages=N passes=N spin=N</c>.</summary>
    public string CommandLine => string.Create(CultureInfo.InvariantCulture, $"pages={Pages} passes={Passes} spin={Spin}");

    /// <summary>The workload a command line names (<c>pages=N passes=N spin=N</c>, each optional: 256 pages, 1,000
    /// passes, no spin), checked against <paramref name="memoryBytes"/> of RAM.</summary>
    /// <exception cref="BadInputException">A word it does not know, a bad number, or an area larger than RAM.</exception>
    public static MigrationWorkload Parse(string commandLine, ulong memoryBytes)
    {
        long pages = 256, passes = 1000, spin = 0;
        foreach (string word in commandLine.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = word.IndexOf('=');
            string key = eq > 0 ? word[..eq] : word;
            if (eq <= 0 || !long.TryParse(word[(eq + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out long value))
            {
                throw new BadInputException($"the migration workload's command line holds '{word}', which is not NAME=NUMBER",
                    "Give e.g. --cmdline \"pages=4096 passes=500 spin=0\"");
            }
            switch (key)
            {
                case "pages": pages = value; break;
                case "passes": passes = value; break;
                case "spin": spin = value; break;
                default:
                    throw new BadInputException($"the migration workload has no setting '{key}'", "Its settings are pages=N, passes=N and spin=N");
            }
        }
        long available = memoryBytes > MigrationGuest.AreaStart ? (long)((memoryBytes - MigrationGuest.AreaStart) / 4096) : 0;
        if (pages < 1 || pages > available)
        {
            throw new BadInputException($"a migration workload of {pages:N0} pages does not fit {Size.Format(memoryBytes)} of RAM (at most {available:N0} pages above {MigrationGuest.AreaStart >> 20} MiB)",
                "Give fewer pages=, or more --memory");
        }
        if (passes < 1 || spin < 0)
        {
            throw new BadInputException($"passes={passes} spin={spin}: at least one pass, and no negative spin", "Give e.g. passes=1000 spin=0");
        }
        return new MigrationWorkload(pages, passes, spin);
    }
}

/// <summary>The workload of live-migration tests on KVM, as QEMU's migration tests have one (tests/migration/: a guest
/// that increments a byte in every page of a large area in a loop): a ring-0 guest of straight-line 64-bit code with
/// port I/O only (what this host's nested KVM runs), assembled with Iced. Pass p checks that every page's counter
/// holds p before it increments it, so a page the migration lost or sent stale is found by the guest itself on its
/// next pass, which then ends with <see cref="Mismatch"/> after reporting the page on <see cref="MismatchPort"/>.
/// After each pass it writes the passes done to <see cref="ProgressPort"/>; after the last it ends with
/// <see cref="Success"/>, when every counter holds the pass count (<see cref="Check"/> verifies that from the
/// host).</summary>
public static class MigrationGuest
{
    /// <summary>The name <c>nestor run</c> knows it by.</summary>
    public const string BuiltInName = "builtin:kvm-migrate";

    /// <summary>Where the area starts: above the boot data and the kernel at 1 MiB.</summary>
    public const ulong AreaStart = 2UL << 20;

    /// <summary>The progress port (a 32-bit OUT of the passes done) and the mismatch port (the page found wrong).</summary>
    public const ushort ProgressPort = 0x5E8, MismatchPort = 0x5EC;

    /// <summary>Debug-exit statuses.</summary>
    public const uint Success = 0x4D, Mismatch = 0x13;

    private const string NamePrefix = "kvm migration workload (";

    /// <summary>Whether <paramref name="kernel"/> is a migration workload (its settings are then the VM's command line).</summary>
    public static bool IsWorkload(KernelImageSource kernel) => kernel.Name.StartsWith(NamePrefix, StringComparison.Ordinal);

    /// <summary>The guest for <paramref name="workload"/>.</summary>
    public static KernelImageSource Build(MigrationWorkload workload)
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var pass = a.CreateLabel();
            var page = a.CreateLabel();
            var spin = a.CreateLabel();
            var spun = a.CreateLabel();
            var mismatch = a.CreateLabel();
            a.mov(r8, AreaStart);
            a.mov(r9, (ulong)workload.Pages);
            a.mov(r10, (ulong)workload.Passes);
            a.mov(r11, (ulong)workload.Spin);
            a.xor(ebx, ebx);                     // rbx: passes done
            a.Label(ref pass);
            a.mov(rdi, r8);
            a.mov(rcx, r9);
            a.Label(ref page);
            a.cmp(__qword_ptr[rdi], rbx);        // every counter holds the passes done before this pass touches it
            a.jne(mismatch);
            a.inc(__qword_ptr[rdi]);
            a.add(rdi, 4096);
            a.dec(rcx);
            a.jnz(page);
            a.inc(rbx);
            a.mov(eax, ebx);
            a.mov(dx, ProgressPort);
            a.@out(dx, eax);
            a.mov(rcx, r11);
            a.test(rcx, rcx);
            a.jz(spun);
            a.Label(ref spin);
            a.pause();
            a.dec(rcx);
            a.jnz(spin);
            a.Label(ref spun);
            a.cmp(rbx, r10);
            a.jb(pass);
            a.mov(dx, DebugExitPort.Port);
            a.mov(eax, Success);
            a.@out(dx, eax);
            a.hlt();
            a.Label(ref mismatch);
            a.mov(rax, rdi);
            a.sub(rax, r8);
            a.shr(rax, 12);                      // the page's index in the area
            a.mov(dx, MismatchPort);
            a.@out(dx, eax);
            a.mov(dx, DebugExitPort.Port);
            a.mov(eax, Mismatch);
            a.@out(dx, eax);
            a.hlt();
        });
        return GuestAssembler.Flat($"{NamePrefix}{workload.CommandLine})", code);
    }

    /// <summary>The pages of the area whose counter is not <paramref name="passes"/>, at most
    /// <paramref name="limit"/> of them: empty when the guest's memory is what an unmigrated run of that many passes
    /// leaves.</summary>
    public static IReadOnlyList<(long Page, ulong Counter)> Check(GuestMemory memory, MigrationWorkload workload, long passes, int limit = 16)
    {
        var wrong = new List<(long, ulong)>();
        Span<byte> counter = stackalloc byte[8];
        for (long i = 0; i < workload.Pages && wrong.Count < limit; i++)
        {
            memory.Read(new GuestPhysical(AreaStart + (ulong)i * 4096), counter);
            ulong value = BitConverter.ToUInt64(counter);
            if (value != (ulong)passes)
            {
                wrong.Add((i, value));
            }
        }
        return wrong;
    }
}

/// <summary>The ports of a <see cref="MigrationGuest"/>: the passes it reported done and the page it found wrong. Not
/// part of the VM's saved state: the guest writes absolute pass numbers, so a destination's port learns them from the
/// guest's next pass.</summary>
public sealed class MigrationGuestPort : IPortDevice
{
    private long passes;

    public string Name => "migration-workload";

    /// <summary>The passes the guest last reported done (0 before its first report).</summary>
    public long Passes => Interlocked.Read(ref passes);

    /// <summary>The page the guest found wrong, if it did.</summary>
    public long? MismatchedPage { get; private set; }

    /// <summary>Claims the ports on <paramref name="vm"/>'s bus.</summary>
    public static MigrationGuestPort Attach(Vm vm)
    {
        var port = new MigrationGuestPort();
        vm.Bus.Claim(port, MigrationGuest.ProgressPort, 8);
        return port;
    }

    public uint Read(ushort port, int size) => port == MigrationGuest.ProgressPort ? (uint)Passes : 0;

    public void Write(ushort port, int size, uint value)
    {
        if (port == MigrationGuest.ProgressPort)
        {
            Interlocked.Exchange(ref passes, value);
        }
        else if (port == MigrationGuest.MismatchPort)
        {
            MismatchedPage = value;
        }
    }
}

using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>How a <see cref="PatternGuest"/> fills its RAM, in 4 KiB pages from <see cref="PatternGuest.FillStart"/>:
/// first <paramref name="IdenticalPages"/> whose content is the same in every VM with this plan (page <c>i</c> holds
/// a function of <c>i</c> alone: the shared code and data of identical guests), then <paramref name="ZeroPages"/>
/// written with zeros, then <paramref name="RandomPages"/> of pseudo-random content seeded per VM (unique). The top
/// <paramref name="BalloonPages"/> pages of the fill are then inflated through the <see cref="BalloonPort"/>,
/// deflated, and read back.</summary>
public sealed record PatternPlan(long IdenticalPages, long ZeroPages, long RandomPages, long BalloonPages)
{
    /// <summary>The pages the guest writes.</summary>
    public long FilledPages => IdenticalPages + ZeroPages + RandomPages;

    /// <summary>A plan for <paramref name="memoryBytes"/> of RAM: all pages from <see cref="PatternGuest.FillStart"/>
    /// to the top, split by the fractions (the random pages take the rest), ballooning
    /// <paramref name="balloonFraction"/> of them.</summary>
    /// <exception cref="Errors.BadInputException">The fractions are not in [0, 1] or add up to more than 1, or the
    /// memory is too small to fill.</exception>
    public static PatternPlan For(ulong memoryBytes, double identical, double zero, double balloonFraction)
    {
        if (!(identical >= 0 && zero >= 0 && identical + zero <= 1 && balloonFraction >= 0 && balloonFraction <= 1))
        {
            throw new Errors.BadInputException($"identical {identical}, zero {zero} and balloon {balloonFraction} are not fractions of the VM's memory (each in [0, 1], identical + zero at most 1)",
                "Give e.g. --identical 0.5 --zero 0.25 (the rest is random) and --balloon 0.5");
        }
        if (memoryBytes <= PatternGuest.FillStart || memoryBytes > GuestMemoryLayout.MmioHoleStart)
        {
            throw new Errors.BadInputException($"a pattern guest needs more than {PatternGuest.FillStart >> 20} MiB and at most 3 GiB of RAM, not {Size.Format(memoryBytes)}",
                "Give e.g. --memory 64M");
        }
        long pages = (long)((memoryBytes - PatternGuest.FillStart) / 4096);
        long same = (long)(pages * identical), zeros = (long)(pages * zero);
        return new PatternPlan(same, zeros, pages - same - zeros, (long)(pages * balloonFraction));
    }
}

/// <summary>A ring-0 guest that fills its memory with patterns, for overcommitment on KVM: straight-line 64-bit code
/// with port I/O only (no interrupts, exceptions or CPL 3, which this host's nested KVM cannot run), assembled with
/// Iced. It fills its RAM as its <see cref="PatternPlan"/> says, reports <see cref="Filled"/> on the balloon port's
/// PHASE register (the host measures its memory there, merges and measures again while the vCPU waits), checks every
/// page it wrote still holds what it wrote (<see cref="Verified"/>; a merged page must read the same), inflates the
/// top of its fill (<see cref="Inflated"/>), deflates it and checks it reads back zero (<see cref="Deflated"/>), and
/// ends with <see cref="Success"/> on the debug-exit port, or one of the failure statuses.</summary>
public static class PatternGuest
{
    /// <summary>Where the fill starts: above the boot data (to 512 KiB) and the kernel (at 1 MiB).</summary>
    public const ulong FillStart = 2UL << 20;

    /// <summary>Phases reported on <see cref="BalloonPort.PhaseRegister"/>.</summary>
    public const uint Filled = 1, Verified = 2, Inflated = 3, Deflated = 4;

    /// <summary>Debug-exit statuses.</summary>
    public const uint Success = 0x4E, ContentChanged = 0x10, BalloonRefused = 0x11, DeflatedNotZero = 0x12;

    // fmix64 of MurmurHash3's finalizer: each word a well-mixed function of (page, word, key).
    private const ulong Golden = 0x9E37_79B9_7F4A_7C15, Mix1 = 0xFF51_AFD7_ED55_8CCD, Mix2 = 0xC4CE_B9FE_1A85_EC53;

    /// <summary>The word the guest writes at word <paramref name="word"/> of page <paramref name="page"/> of a region
    /// with <paramref name="key"/> (0 for the identical region, the VM's seed for the random one): the host's
    /// reference for what the guest holds.</summary>
    public static ulong Word(long page, int word, ulong key)
    {
        ulong x = (((ulong)page << 9) | (uint)word) + key * Golden;
        x ^= x >> 33;
        x *= Mix1;
        x ^= x >> 33;
        x *= Mix2;
        x ^= x >> 33;
        return x;
    }

    /// <summary>The guest for <paramref name="plan"/>, with <paramref name="seed"/> (non-zero, distinct per VM) for
    /// its random pages.</summary>
    public static KernelImageSource Build(PatternPlan plan, ulong seed)
    {
        ArgumentOutOfRangeException.ThrowIfZero(seed);
        ulong identical = FillStart, zero = identical + (ulong)plan.IdenticalPages * 4096, random = zero + (ulong)plan.ZeroPages * 4096;
        ulong top = random + (ulong)plan.RandomPages * 4096, balloon = top - (ulong)plan.BalloonPages * 4096;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var changed = a.CreateLabel();
            Region(a, identical, plan.IdenticalPages, 0, verify: false, changed);
            Region(a, zero, plan.ZeroPages, null, verify: false, changed);
            Region(a, random, plan.RandomPages, seed, verify: false, changed);
            Phase(a, Filled);
            Region(a, identical, plan.IdenticalPages, 0, verify: true, changed);
            Region(a, zero, plan.ZeroPages, null, verify: true, changed);
            Region(a, random, plan.RandomPages, seed, verify: true, changed);
            Phase(a, Verified);
            if (plan.BalloonPages > 0)
            {
                var refused = a.CreateLabel();
                var notZero = a.CreateLabel();
                Balloon(a, balloon, plan.BalloonPages, BalloonPort.Inflate, refused);
                Phase(a, Inflated);
                Balloon(a, balloon, plan.BalloonPages, BalloonPort.Deflate, refused);
                Region(a, balloon, plan.BalloonPages, null, verify: true, notZero); // §5.5.6.1: no content promised; here a zero page
                Phase(a, Deflated);
                Exit(a, Success);
                a.Label(ref refused);
                Exit(a, BalloonRefused);
                a.Label(ref notZero);
                Exit(a, DeflatedNotZero);
            }
            else
            {
                Exit(a, Success);
            }
            a.Label(ref changed);
            Exit(a, ContentChanged);
        });
        return GuestAssembler.Flat($"pattern guest (seed {seed})", code);
    }

    // Writes (or, verifying, compares) every word of `pages` pages from `start`: Word(i, j, key), or zero without a key.
    private static void Region(Assembler a, ulong start, long pages, ulong? key, bool verify, Label mismatch)
    {
        if (pages == 0)
        {
            return;
        }
        var page = a.CreateLabel();
        var word = a.CreateLabel();
        a.mov(rdi, start);
        a.xor(ecx, ecx);                 // rcx: page index in the region
        a.mov(r8, (ulong)pages);
        a.Label(ref page);
        a.xor(edx, edx);                 // rdx: word index in the page
        a.Label(ref word);
        if (key is { } k)
        {
            a.mov(rax, rcx);
            a.shl(rax, 9);
            a.or(rax, rdx);
            a.mov(rbx, k * Golden);
            a.add(rax, rbx);
            a.mov(rbx, rax);
            a.shr(rbx, 33);
            a.xor(rax, rbx);
            a.mov(rbx, Mix1);
            a.imul(rax, rbx);
            a.mov(rbx, rax);
            a.shr(rbx, 33);
            a.xor(rax, rbx);
            a.mov(rbx, Mix2);
            a.imul(rax, rbx);
            a.mov(rbx, rax);
            a.shr(rbx, 33);
            a.xor(rax, rbx);
        }
        else
        {
            a.xor(eax, eax);
        }
        if (verify)
        {
            a.cmp(__qword_ptr[rdi], rax);
            a.jne(mismatch);
        }
        else
        {
            a.mov(__qword_ptr[rdi], rax);
        }
        a.add(rdi, 8);
        a.inc(rdx);
        a.cmp(rdx, 512);
        a.jb(word);
        a.inc(rcx);
        a.cmp(rcx, r8);
        a.jb(page);
    }

    private static void Balloon(Assembler a, ulong start, long pages, uint command, Label refused)
    {
        Out(a, BalloonPort.BasePort + BalloonPort.PfnRegister, (uint)(start >> 12));
        Out(a, BalloonPort.BasePort + BalloonPort.CountRegister, (uint)pages);
        Out(a, BalloonPort.BasePort + BalloonPort.CommandRegister, command);
        a.@in(eax, dx);                  // pages the command accepted
        a.cmp(eax, (uint)pages);
        a.jne(refused);
    }

    private static void Phase(Assembler a, uint phase) => Out(a, BalloonPort.BasePort + BalloonPort.PhaseRegister, phase);

    private static void Out(Assembler a, int port, uint value)
    {
        a.mov(dx, (ushort)port);
        a.mov(eax, value);
        a.@out(dx, eax);
    }

    private static void Exit(Assembler a, uint status)
    {
        Out(a, DebugExitPort.Port, status);
        a.hlt();
    }
}

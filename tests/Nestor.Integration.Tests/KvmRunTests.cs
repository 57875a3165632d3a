using System.Text.Json;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Boots real guests on KVM through the <c>nestor</c> command and checks what a user sees.</summary>
public class KvmRunTests
{
    public KvmRunTests() => RequireKvm();

    private static void Exit(Assembler a, uint status)
    {
        a.mov(dx, 0xF4);
        a.mov(eax, status);
        a.@out(dx, eax);
        a.hlt();
    }

    [Fact]
    public void Builtin_guest_prints_its_greeting_and_the_exit_statistics()
    {
        var r = Run("run", "--engine", "kvm", "--stats", "--cmdline", "quiet loglevel=3", "--memory", "128M");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("Hello from a Nestor guest", r.Stdout);
        Assert.Contains("the hypervisor is: NestorNestor", r.Stdout);
        Assert.Contains("128 MiB of RAM", r.Stdout);
        Assert.Contains("command line \"quiet loglevel=3\"", r.Stdout);
        Assert.Contains("scratch-register and loopback probes", r.Stdout);
        Assert.Contains("VM exits handled by Nestor (kvm engine)", r.Stdout);
        Assert.Matches(@"port-write\s+\d+", r.Stdout);
        Assert.Contains("KVM's own counters", r.Stdout);
        Assert.Matches(@"\n  exits\s+\d+", r.Stdout);
    }

    [Theory]
    [InlineData(0u, 0)]
    [InlineData(42u, 42)]
    [InlineData(119u, 119)]
    [InlineData(1000u, 119)]
    public void Process_exit_status_is_the_guest_debug_exit_status(uint status, int expected)
    {
        string guest = FlatGuest(a => Exit(a, status));
        var r = Run("run", "--engine", "kvm", "--flat", guest);
        Assert.True(r.ExitCode == expected, r.ToString());
        if (status > 119)
        {
            Assert.Contains("status 1000", r.Stderr);
        }
    }

    [Fact]
    public void Dump_state_prints_the_final_registers_as_json()
    {
        string guest = FlatGuest(a =>
        {
            a.mov(rax, 0x1122_3344_5566_7788UL);
            a.mov(r15, 0xDEAD_BEEFUL);
            a.mov(rbx, rsp);
            a.mov(ecx, 0xC000_0100);  // FS.base
            a.xor(eax, eax);
            a.mov(edx, 0x7F);
            a.wrmsr();
            a.mov(rax, 0x1122_3344_5566_7788UL);
            Exit(a, 5);
        });
        var r = Run("run", "--engine", "kvm", "--flat", guest, "--dump-state", "-");
        Assert.True(r.ExitCode == 5, r.ToString());
        using var json = JsonDocument.Parse(r.Stdout);
        var s = json.RootElement;
        Assert.Equal("0xf4", s.GetProperty("rdx").GetString());
        Assert.Equal("0x5", s.GetProperty("rax").GetString()); // eax = status, upper half cleared by the 32-bit mov
        Assert.Equal("0xdeadbeef", s.GetProperty("r15").GetString());
        Assert.Equal("0x80000", s.GetProperty("rbx").GetString()); // the documented initial RSP
        Assert.Equal("0x2000", s.GetProperty("rdi").GetString());  // boot information block
        Assert.Equal("0x7f00000000", s.GetProperty("msrs").GetProperty("fs_base").GetString());
        Assert.Equal(0, s.GetProperty("cpl").GetInt32());
        Assert.Equal("0x10000", s.GetProperty("cr3").GetString());
        Assert.Equal("0x8", s.GetProperty("segments").GetProperty("cs").GetProperty("selector").GetString());
        ulong rip = Convert.ToUInt64(s.GetProperty("rip").GetString(), 16);
        Assert.InRange(rip, 0x100000UL, 0x100100UL);

        string file = Path.GetTempFileName();
        var r2 = Run("run", "--engine", "kvm", "--flat", guest, "--dump-state", file);
        Assert.Equal(5, r2.ExitCode);
        Assert.Equal("0xdeadbeef", JsonDocument.Parse(File.ReadAllText(file)).RootElement.GetProperty("r15").GetString());
    }

    [Fact]
    public void Hand_written_flat_code_runs_at_the_given_load_address()
    {
        // mov edx, 0xf4 / mov eax, 9 / out dx, eax / hlt, typed in by hand.
        byte[] code = [0xBA, 0xF4, 0x00, 0x00, 0x00, 0xB8, 0x09, 0x00, 0x00, 0x00, 0xEF, 0xF4];
        string file = WriteTemp(code, ".bin");
        var r = Run("run", "--engine", "kvm", "--flat", "--load-addr", "0x200000", file, "--dump-state", "-");
        Assert.True(r.ExitCode == 9, r.ToString());
        Assert.Equal("0x20000b", JsonDocument.Parse(r.Stdout).RootElement.GetProperty("rip").GetString());
    }

    [Fact]
    public void A_triple_fault_is_reported_with_the_final_state()
    {
        string guest = FlatGuest(a =>
        {
            a.mov(rax, 0x5555UL);
            a.ud2(); // no IDT: #UD cannot be delivered, nor the #DF after it
        });
        var r = Run("run", "--engine", "kvm", "--flat", guest);
        Assert.True(r.ExitCode == 122, r.ToString());
        Assert.Contains("triple-faulted", r.Stderr);
        Assert.Contains("no IDT", r.Stderr);
        Assert.Contains("final vCPU state", r.Stderr);
        Assert.Contains("rax=0000000000005555", r.Stderr);
    }

    [Fact]
    public void An_instruction_kvm_cannot_execute_is_reported_with_its_address()
    {
        // Jump into the device hole: there is no RAM to fetch the instruction from.
        string guest = FlatGuest(a =>
        {
            a.mov(eax, 0xD000_0000);
            a.jmp(rax);
        });
        var r = Run("run", "--engine", "kvm", "--flat", guest, "--json");
        Assert.True(r.ExitCode == 123, r.ToString());
        var outcome = JsonDocument.Parse(r.Stdout).RootElement.GetProperty("outcome");
        Assert.Equal("emulation-failure", outcome.GetProperty("kind").GetString());
        Assert.Contains("rip=0xd0000000", outcome.GetProperty("message").GetString());
    }

    [Fact]
    public void A_guest_that_never_stops_is_ended_by_the_timeout()
    {
        string guest = FlatGuest(a =>
        {
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var r = Run("run", "--engine", "kvm", "--flat", guest, "--timeout", "1");
        Assert.True(r.ExitCode == 124, r.ToString());
        Assert.Contains("--timeout", r.Stderr);
        Assert.InRange(clock.Elapsed.TotalSeconds, 0.9, 30);
    }

    [Fact]
    public void Halting_with_interrupts_off_ends_the_run_with_an_explanation()
    {
        string guest = FlatGuest(a => a.hlt());
        var r = Run("run", "--engine", "kvm", "--flat", guest);
        Assert.True(r.ExitCode == 125, r.ToString());
        Assert.Contains("interrupts disabled", r.Stderr);
    }

    [Fact]
    public void Unclaimed_ports_and_mmio_are_reported_once_counted_and_not_fatal()
    {
        string guest = FlatGuest(a =>
        {
            var bad = a.CreateLabel();
            a.mov(dx, 0x80);
            a.mov(al, 1);
            a.@out(dx, al);
            a.@out(dx, al);
            a.@out(dx, al);
            a.mov(edi, 0xD000_0000);
            a.mov(rax, __qword_ptr[rdi]);
            a.cmp(rax, -1);
            a.jne(bad);
            Exit(a, 0);
            a.Label(ref bad);
            Exit(a, 1);
        });
        var r = Run("run", "--engine", "kvm", "--flat", guest, "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Single(r.Stderr.Split('\n'), l => l.Contains("I/O port 0x80"));
        Assert.Single(r.Stderr.Split('\n'), l => l.Contains("MMIO address 0xd0000000"));
        var unclaimed = JsonDocument.Parse(r.Stdout).RootElement.GetProperty("unclaimed").EnumerateArray().ToList();
        Assert.Contains(unclaimed, u => u.GetProperty("address").GetString() == "0x80" && u.GetProperty("writes").GetInt32() == 3);
        Assert.Contains(unclaimed, u => u.GetProperty("address").GetString() == "0xd0000000" && u.GetProperty("reads").GetInt32() == 1);
    }

    [Fact]
    public void Every_port_write_is_one_vm_exit_and_kvm_counts_them_too()
    {
        const int writes = 5000;
        string guest = FlatGuest(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, writes);
            a.mov(dx, 0x3FF);
            a.Label(ref loop);
            a.@out(dx, al);
            a.sub(ecx, 1);
            a.jnz(loop);
            Exit(a, 0);
        });
        var r = Run("run", "--engine", "kvm", "--flat", guest, "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var root = JsonDocument.Parse(r.Stdout).RootElement;
        var exits = root.GetProperty("exits");
        Assert.Equal(writes + 1, exits.GetProperty("by_reason").GetProperty("port-write").GetProperty("count").GetInt32());
        var scratch = exits.GetProperty("by_port").EnumerateArray().Single(p => p.GetProperty("port").GetString() == "0x3ff");
        Assert.Equal(writes, scratch.GetProperty("writes").GetInt32());
        Assert.Equal("com1", scratch.GetProperty("device").GetString());
        Assert.True(root.GetProperty("engine_counters").GetProperty("exits").GetInt64() >= writes + 1);
    }

    [Fact]
    public void Serial_output_goes_to_the_log_file_when_asked()
    {
        string log = Path.GetTempFileName();
        var r = Run("run", "--engine", "kvm", "--serial-log", log);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.DoesNotContain("Hello", r.Stdout);
        Assert.Contains("Hello from a Nestor guest", File.ReadAllText(log));
    }

    [Fact]
    public void Json_report_carries_outcome_serial_and_exits()
    {
        var r = Run("run", "--engine", "kvm", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var root = JsonDocument.Parse(r.Stdout).RootElement;
        Assert.Equal("debug-exit", root.GetProperty("outcome").GetProperty("kind").GetString());
        Assert.Equal(0, root.GetProperty("outcome").GetProperty("guest_status").GetInt32());
        Assert.Contains("NestorNestor", root.GetProperty("serial").GetString());
        Assert.Equal("kvm", root.GetProperty("engine").GetString());
    }

    [Fact]
    public void A_multiboot_elf_image_boots_by_the_nestor_protocol()
    {
        byte[] payload = Nestor.Hypervisor.BuiltIn.GuestAssembler.Assemble(a =>
        {
            a.mov(dx, 0x3F8);
            a.mov(al, (byte)'X');
            a.@out(dx, al);
            a.mov(al, (byte)'\n');
            a.@out(dx, al);
            Exit(a, 7);
        }, Nestor.Hypervisor.BuiltIn.MultibootImage.PayloadAddress);
        string image = WriteTemp(Nestor.Hypervisor.BuiltIn.MultibootImage.Build(payload), ".elf");
        var r = Run("run", "--engine", "kvm", image);
        Assert.True(r.ExitCode == 7, r.ToString());
        Assert.Equal("X\n", r.Stdout);
    }
}

using System.Buffers.Binary;
using Nestor.Hypervisor.BuiltIn;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary><c>nestor run --multiboot KERNEL --module FILE[,cmdline]</c> as a user types it: the modules reach the
/// kernel in order with their command lines, and misuse is refused.</summary>
public class MultibootCliTests
{
    /// <summary>A Multiboot kludge kernel at 2 MiB whose 32-bit code prints, per module, its string, '=', its
    /// contents and a newline on COM1, then exits with mods_count.</summary>
    private static byte[] ModulePrinter()
    {
        const uint Address = 0x200000, CodeOffset = 32;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var next = a.CreateLabel();
            var done = a.CreateLabel();
            var name = a.CreateLabel();
            var contents = a.CreateLabel();
            var newline = a.CreateLabel();
            a.mov(dx, 0x3F8);
            a.mov(ecx, __dword_ptr[ebx + 20]);
            a.mov(edi, __dword_ptr[ebx + 24]);
            a.Label(ref next);
            a.test(ecx, ecx);
            a.jz(done);
            a.mov(esi, __dword_ptr[edi + 8]);
            a.Label(ref name);
            a.lodsb();
            a.test(al, al);
            a.jz(contents);
            a.@out(dx, al);
            a.jmp(name);
            a.Label(ref contents);
            a.mov(al, (byte)'=');
            a.@out(dx, al);
            a.mov(esi, __dword_ptr[edi]);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.cmp(esi, __dword_ptr[edi + 4]);
            a.jae(newline);
            a.lodsb();
            a.@out(dx, al);
            a.jmp(loop);
            a.Label(ref newline);
            a.mov(al, 10);
            a.@out(dx, al);
            a.add(edi, 16);
            a.dec(ecx);
            a.jmp(next);
            a.Label(ref done);
            a.mov(dx, 0xF4);
            a.mov(eax, __dword_ptr[ebx + 20]);
            a.@out(dx, eax);
            a.hlt();
        }, Address + CodeOffset, bitness: 32);
        var header = new byte[32];
        const uint Magic = 0x1BADB002, Flags = 1u << 16;
        uint end = Address + CodeOffset + (uint)code.Length;
        uint[] fields = [Magic, Flags, unchecked(0u - Magic - Flags), Address, Address, end, end, Address + CodeOffset];
        for (int i = 0; i < fields.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4 * i), fields[i]);
        }
        return [.. header, .. code];
    }

    [Fact]
    public void Modules_given_with_module_reach_the_kernel_in_order_with_their_command_lines()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-modules-").FullName;
        try
        {
            string kernel = Path.Combine(directory, "kernel.bin");
            File.WriteAllBytes(kernel, ModulePrinter());
            File.WriteAllText(Path.Combine(directory, "one"), "first");
            File.WriteAllText(Path.Combine(directory, "two"), "second");
            var r = Run("run", "--multiboot", kernel, "--module", Path.Combine(directory, "one") + ",a=1,b", "--module", Path.Combine(directory, "two"));
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Equal("one a=1,b=first\ntwo=second\n", r.Stdout);

            var without = Run("run", kernel, "--module", Path.Combine(directory, "one"));
            Assert.Equal(120, without.ExitCode);
            Assert.Contains("--module gives a Multiboot kernel its modules", without.Stderr);
            var missing = Run("run", "--multiboot", kernel, "--module", Path.Combine(directory, "absent"));
            Assert.Equal(120, missing.ExitCode);
            Assert.Contains("module file", missing.Stderr);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary><c>nestor run --qemu</c> gives the modules to QEMU as its <c>-initrd</c>: the same kernel sees them in
    /// order, each string being what QEMU makes of it (the path as given, a space, the command line, commas kept).
    /// Without the modules passed on, the kernel exits with mods_count 0.</summary>
    [Fact]
    public void Modules_given_with_module_reach_the_kernel_on_qemu_as_its_initrd()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-modules-").FullName;
        try
        {
            string kernel = Path.Combine(directory, "kernel.bin");
            File.WriteAllBytes(kernel, ModulePrinter());
            string one = Path.Combine(directory, "one"), two = Path.Combine(directory, "two");
            File.WriteAllText(one, "first");
            File.WriteAllText(two, "second");
            var r = Run("run", "--qemu", "--multiboot", kernel, "--module", one + ",a=1,b", "--module", two, "--timeout", "120");
            Assert.True(r.ExitCode == 2, r.ToString());
            // SeaBIOS's banner comes first on QEMU's serial port.
            Assert.EndsWith($"{one} a=1,b=first\n{two}=second\n", r.Stdout);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}

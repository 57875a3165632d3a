using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Nestor.Kvm.Tests;

/// <summary>The binding's structures must have exactly the sizes of the kernel's (linux/kvm.h); the test compiles
/// a C program against the installed headers and compares.</summary>
public class StructureLayoutTests
{
    [Fact]
    public void Structures_match_the_installed_kernel_headers()
    {
        string dir = Directory.CreateTempSubdirectory("nestor-kvm-layout").FullName;
        try
        {
            string source = Path.Combine(dir, "sizes.c");
            File.WriteAllText(source, """
                #include <linux/kvm.h>
                #include <stdio.h>
                int main(void) {
                  printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct kvm_regs), sizeof(struct kvm_segment),
                    sizeof(struct kvm_dtable), sizeof(struct kvm_sregs), sizeof(struct kvm_fpu),
                    sizeof(struct kvm_msr_entry), sizeof(struct kvm_cpuid_entry2));
                  return 0;
                }
                """);
            Run("gcc", $"-o {dir}/sizes {source}");
            string output = Run($"{dir}/sizes", "");
            string expected = string.Join(' ', Unsafe.SizeOf<KvmRegisters>(), Unsafe.SizeOf<KvmSegment>(),
                Unsafe.SizeOf<KvmDescriptorTable>(), Unsafe.SizeOf<KvmSpecialRegisters>(), Unsafe.SizeOf<KvmFpu>(),
                Unsafe.SizeOf<KvmMsrEntry>(), Unsafe.SizeOf<KvmCpuidEntry>());
            Assert.Equal(output.Trim(), expected);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string Run(string file, string arguments)
    {
        using var p = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {arguments} failed: {error}");
        return output;
    }
}

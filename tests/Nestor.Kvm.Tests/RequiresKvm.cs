namespace Nestor.Kvm.Tests;

/// <summary>Tests that need /dev/kvm fail with this explanation when it is absent, instead of passing silently.</summary>
internal static class RequiresKvm
{
    public static void Check()
    {
        if (!File.Exists(KvmSystem.DefaultDevicePath))
        {
            Assert.Fail("This test needs /dev/kvm, which this machine does not have: it boots a real VM on KVM. " +
                        "Run the suite on a Linux host with KVM (nested KVM is enough).");
        }
    }
}

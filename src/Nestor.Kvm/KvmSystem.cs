using System.Runtime.InteropServices;
using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>The KVM subsystem, opened through <c>/dev/kvm</c>: API version, capabilities, supported CPUID, and VM
/// creation (Linux Documentation/virt/kvm/api.rst, "System ioctls").</summary>
public sealed class KvmSystem : IDisposable
{
    /// <summary>The only stable KVM API version (api.rst §4.1: "applications should refuse to run if KVM_GET_API_VERSION
    /// returns a value other than 12").</summary>
    public const int StableApiVersion = 12;

    /// <summary>The default device path.</summary>
    public const string DefaultDevicePath = "/dev/kvm";

    private readonly FileDescriptor device;

    private KvmSystem(FileDescriptor device, string path, int apiVersion)
    {
        this.device = device;
        DevicePath = path;
        ApiVersion = apiVersion;
        VcpuMmapSize = device.Call(Ioctl.GetVcpuMmapSize, 0, "KVM_GET_VCPU_MMAP_SIZE");
    }

    /// <summary>Path of the device this object opened.</summary>
    public string DevicePath { get; }

    /// <summary>The KVM API version the kernel reports (always <see cref="StableApiVersion"/> once opened).</summary>
    public int ApiVersion { get; }

    /// <summary>Size of the shared <c>kvm_run</c> area each vCPU maps.</summary>
    public int VcpuMmapSize { get; }

    /// <summary>Opens <paramref name="path"/> and checks the API version.</summary>
    /// <exception cref="KvmUnavailableException">The device is missing, not accessible, or of another API version.</exception>
    public static KvmSystem Open(string path = DefaultDevicePath)
    {
        int fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            string advice = errno switch
            {
                LibC.ENOENT => $"{path} does not exist: this host has no KVM. Load the kvm_intel or kvm_amd module " +
                               "(the CPU needs VT-x or AMD-V, enabled in firmware), or use another engine",
                LibC.EACCES or LibC.EPERM => $"You may not open {path}. Add your user to the 'kvm' group " +
                                             "(sudo usermod -aG kvm $USER, then log in again) or run as root",
                LibC.ENXIO or LibC.ENODEV => $"{path} exists but no KVM driver is behind it. Load kvm_intel or kvm_amd",
                _ => $"Check that {path} is the KVM device and that the kvm module is loaded",
            };
            throw new KvmUnavailableException($"open {path}", errno, advice);
        }
        var device = new FileDescriptor(fd);
        int version = LibC.Ioctl(fd, Ioctl.GetApiVersion, 0);
        if (version != StableApiVersion)
        {
            int errno = version < 0 ? Marshal.GetLastPInvokeError() : 0;
            device.Dispose();
            throw new KvmUnavailableException("KVM_GET_API_VERSION", errno,
                $"{path} reports KVM API version {version}; Nestor speaks version {StableApiVersion} only");
        }
        return new KvmSystem(device, path, version);
    }

    /// <summary>KVM_CHECK_EXTENSION on the system fd: 0 when absent, otherwise a capability-specific positive value.</summary>
    public int CheckCapability(KvmCapability capability)
    {
        int result = LibC.Ioctl(device.Value, Ioctl.CheckExtension, (nint)capability);
        return result < 0 ? 0 : result;
    }

    /// <summary>The CPUID leaves KVM can present to a guest on this host (KVM_GET_SUPPORTED_CPUID).</summary>
    public unsafe KvmCpuidEntry[] GetSupportedCpuid()
    {
        for (int capacity = 64; capacity <= 4096; capacity *= 2)
        {
            int bytes = 8 + capacity * sizeof(KvmCpuidEntry);
            byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
            try
            {
                *(uint*)buffer = (uint)capacity;
                int result = LibC.Ioctl(device.Value, Ioctl.GetSupportedCpuid, buffer);
                if (result < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == LibC.E2BIG)
                    {
                        continue;
                    }
                    throw new KvmException("KVM_GET_SUPPORTED_CPUID", errno);
                }
                int count = (int)*(uint*)buffer;
                return new ReadOnlySpan<KvmCpuidEntry>(buffer + 8, count).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
        throw new KvmException("KVM_GET_SUPPORTED_CPUID", LibC.E2BIG, "the host reports more than 4096 CPUID leaves");
    }

    /// <summary>The MSRs KVM can save and restore for a guest (KVM_GET_MSR_INDEX_LIST).</summary>
    public unsafe uint[] GetMsrIndexList()
    {
        for (int capacity = 256; capacity <= 16384; capacity *= 2)
        {
            int bytes = 4 + capacity * 4;
            byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
            try
            {
                *(uint*)buffer = (uint)capacity;
                int result = LibC.Ioctl(device.Value, Ioctl.GetMsrIndexList, buffer);
                if (result < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == LibC.E2BIG)
                    {
                        continue;
                    }
                    throw new KvmException("KVM_GET_MSR_INDEX_LIST", errno);
                }
                return new ReadOnlySpan<uint>(buffer + 4, (int)*(uint*)buffer).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
        throw new KvmException("KVM_GET_MSR_INDEX_LIST", LibC.E2BIG);
    }

    /// <summary>Creates an empty VM (no memory, no vCPUs) of the default machine type.</summary>
    public KvmVm CreateVm()
    {
        int fd;
        // KVM_CREATE_VM can fail transiently with EINTR; api.rst recommends retrying.
        do
        {
            fd = LibC.Ioctl(device.Value, Ioctl.CreateVm, 0);
        }
        while (fd < 0 && Marshal.GetLastPInvokeError() == LibC.EINTR);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new KvmException("KVM_CREATE_VM", errno,
                errno == LibC.ENOMEM ? "The host is out of memory" : "The host refused to create a VM; check dmesg");
        }
        return new KvmVm(this, new FileDescriptor(fd));
    }

    public void Dispose() => device.Dispose();
}

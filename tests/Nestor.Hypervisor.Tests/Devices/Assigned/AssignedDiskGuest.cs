using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Devices.Assigned;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Assigned;

/// <summary>One request as the guest puts it in the ring.</summary>
internal readonly record struct GuestRequest(byte Operation, uint Length, ulong Sector, ulong Buffer);

/// <summary>Builds ring-0 test guests that drive the assigned disk controller as a driver would: fill a buffer with a
/// pattern, write the requests into a ring in their memory, program RING_BASE, RING_SIZE and CONTROL, ring SUBMIT,
/// read COMPLETED, INTERRUPT_STATUS and FAULT_ADDRESS_LOW into R9, R10 and R11 (and the ID into R8), compare two
/// buffers qword by qword (mismatches in R12), and exit. It counts the register accesses it emits, so that a test
/// can check the exits (or their absence) against what the guest did.</summary>
internal sealed class AssignedDiskGuest
{
    public const ulong Ring = 0x20_0000;
    public const uint RingSize = 8;
    public const ulong Pattern = 0x0123_4567_89AB_CDEF, PatternStep = 0x9E37_79B9_7F4A_7C15;
    /// <summary>The status byte the guest writes into each request before submitting it, which the controller
    /// overwrites.</summary>
    public const byte Unwritten = 0xEE;

    /// <summary>Register reads and writes the guest makes.</summary>
    public int RegisterReads { get; private set; }

    /// <inheritdoc cref="RegisterReads"/>
    public int RegisterWrites { get; private set; }

    /// <summary>The pattern's qwords, as the guest computes them.</summary>
    public static byte[] PatternBytes(int length)
    {
        var bytes = new byte[length];
        ulong value = Pattern;
        for (int i = 0; i < length / 8; i++)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(i * 8), value);
            value += PatternStep;
        }
        return bytes;
    }

    /// <summary>The guest's code.</summary>
    /// <param name="fill">Where the pattern goes and how many bytes of it (or none).</param>
    /// <param name="requests">The requests, submitted with one doorbell.</param>
    /// <param name="compare">Two buffers and their length to compare after the requests (or none).</param>
    /// <param name="control">What the guest writes to CONTROL.</param>
    /// <param name="controller">Which controller.</param>
    public byte[] Build(
        (ulong Address, int Length)? fill, IReadOnlyList<GuestRequest> requests, (ulong A, ulong B, int Length)? compare,
        uint control = AssignedDiskController.ControlEnable, int controller = 0)
    {
        ulong bar = AssignedDiskController.BaseAddress + (ulong)controller * AssignedDiskController.RegisterStride;
        return GuestAssembler.Assemble(a =>
        {
            if (fill is { } f)
            {
                var loop = a.CreateLabel();
                a.mov(rdi, f.Address);
                a.mov(rcx, (ulong)(f.Length / 8));
                a.mov(rax, Pattern);
                a.mov(rdx, PatternStep);
                a.Label(ref loop);
                a.mov(__qword_ptr[rdi], rax);
                a.add(rax, rdx);
                a.add(rdi, 8);
                a.dec(rcx);
                a.jnz(loop);
            }
            for (int i = 0; i < requests.Count; i++)
            {
                var r = requests[i];
                ulong entry = Ring + (ulong)(i % (int)RingSize) * AssignedDiskController.RequestSize;
                a.mov(rdi, entry);
                a.mov(rax, r.Operation | ((ulong)Unwritten << 8) | ((ulong)r.Length << 32));
                a.mov(__qword_ptr[rdi], rax);
                a.mov(rax, r.Sector);
                a.mov(__qword_ptr[rdi + 8], rax);
                a.mov(rax, r.Buffer);
                a.mov(__qword_ptr[rdi + 16], rax);
                a.xor(eax, eax);
                a.mov(__qword_ptr[rdi + 24], rax);
            }
            a.mov(rbx, bar);
            a.mov(r8d, __dword_ptr[rbx + AssignedDiskController.IdRegister]);
            RegisterReads++;
            a.mov(rax, Ring);
            a.mov(__qword_ptr[rbx + AssignedDiskController.RingBaseRegister], rax);
            RegisterWrites++;
            a.mov(eax, RingSize);
            a.mov(__dword_ptr[rbx + AssignedDiskController.RingSizeRegister], eax);
            RegisterWrites++;
            a.mov(eax, control);
            a.mov(__dword_ptr[rbx + AssignedDiskController.ControlRegister], eax);
            RegisterWrites++;
            a.mov(eax, (uint)requests.Count);
            a.mov(__dword_ptr[rbx + AssignedDiskController.SubmitRegister], eax);
            RegisterWrites++;
            a.mov(r9d, __dword_ptr[rbx + AssignedDiskController.CompletedRegister]);
            RegisterReads++;
            a.mov(r10d, __dword_ptr[rbx + AssignedDiskController.InterruptStatusRegister]);
            RegisterReads++;
            a.mov(r11d, __dword_ptr[rbx + AssignedDiskController.FaultAddressLowRegister]);
            RegisterReads++;
            a.xor(r12d, r12d);
            if (compare is { } c)
            {
                var loop = a.CreateLabel();
                var same = a.CreateLabel();
                a.mov(rsi, c.A);
                a.mov(rdi, c.B);
                a.mov(rcx, (ulong)(c.Length / 8));
                a.Label(ref loop);
                a.mov(rax, __qword_ptr[rsi]);
                a.cmp(rax, __qword_ptr[rdi]);
                a.je(same);
                a.inc(r12);
                a.Label(ref same);
                a.add(rsi, 8);
                a.add(rdi, 8);
                a.dec(rcx);
                a.jnz(loop);
            }
            a.mov(dx, DebugExitPort.Port);
            a.xor(eax, eax);
            a.@out(dx, eax);
        });
    }
}

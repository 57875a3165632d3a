namespace Nestor.Hypervisor.Paging;

// Active-memory sampling (issue 15; Waldspurger, OSDI 2002, §5.3): the P2M's side of ESX's statistical working-set
// estimate. A sampled guest page has every cached mapping of it invalidated (the nested entry with its nested-TLB
// shootdown, SDM Vol. 3C §29.4.3; or the shadow entries and the TLB), so that the guest's next access to it is
// intercepted by the VMM, which maps it again through Touch and so marks it touched. The simulated EPT keeps no
// accessed bits (the NestedWalker sets none), so an unmap that faults is the nested mechanism as well as the shadow one;
// the host frame stays, so sampling costs one minor fault per touched sampled page and no copy.
public sealed partial class GuestPhysicalMap
{
    private const byte SampleTracking = 1, SampleTouched = 2;
    private byte[]? sampleStates; // by guest frame: 0 = not sampled, SampleTracking, SampleTouched

    /// <summary>Whether guest frame <paramref name="guestFrame"/> has a host frame now (it is part of the VM's
    /// allocation, the pages a sampler draws from).</summary>
    internal bool IsAllocated(ulong guestFrame) => guestFrame < (ulong)hostFrames.Length && hostFrames[guestFrame] != 0;

    /// <summary>Starts tracking guest frame <paramref name="guestFrame"/>: its cached mappings are invalidated so that
    /// the guest's next access faults into the VMM and marks it touched. False (nothing changed) when the page has no
    /// host frame or is tracked already. Under shadow paging the TLB flush is left to <see cref="EndSampleStarts"/>, so
    /// that a sampler starting n pages pays one flush, not n.</summary>
    internal bool StartSample(ulong guestFrame)
    {
        if (!IsAllocated(guestFrame))
        {
            return false;
        }
        sampleStates ??= new byte[hostFrames.Length];
        if (sampleStates[guestFrame] != 0)
        {
            return false;
        }
        sampleStates[guestFrame] = SampleTracking;
        nested?.Unmap(guestFrame << FrameShift);
        shadow?.BackingChanged(guestFrame);
        return true;
    }

    /// <summary>Completes a batch of <see cref="StartSample"/> calls: under shadow paging the TLB is flushed once, so
    /// that no cached translation of a sampled page survives (a nested unmap shot its own down already).</summary>
    internal void EndSampleStarts()
    {
        if (shadow is not null)
        {
            FlushProcessors();
        }
    }

    /// <summary>Ends tracking guest frame <paramref name="guestFrame"/>: whether the guest touched it since
    /// <see cref="StartSample"/> (a device's access through the P2M counts too: it is use of the page).</summary>
    internal bool EndSample(ulong guestFrame)
    {
        if (sampleStates is null || guestFrame >= (ulong)sampleStates.Length)
        {
            return false;
        }
        bool touched = sampleStates[guestFrame] == SampleTouched;
        sampleStates[guestFrame] = 0;
        return touched;
    }

    /// <summary>Whether tracked guest frame <paramref name="guestFrame"/> has been touched since
    /// <see cref="StartSample"/>, without ending its tracking.</summary>
    internal bool SampleWasTouched(ulong guestFrame) =>
        sampleStates is not null && guestFrame < (ulong)sampleStates.Length && sampleStates[guestFrame] == SampleTouched;

    // The hook in Touch: every access the VMM intercepts for a guest page passes here.
    private void NoteSampledTouch(ulong guestFrame)
    {
        if (sampleStates is not null && guestFrame < (ulong)sampleStates.Length && sampleStates[guestFrame] == SampleTracking)
        {
            sampleStates[guestFrame] = SampleTouched;
        }
    }
}

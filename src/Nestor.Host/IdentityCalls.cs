using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>The caller's identity: geteuid(2), getegid(2).</summary>
public static partial class IdentityCalls
{
    /// <summary>geteuid(2).</summary>
    public static uint EffectiveUserId() => LibC.GetEffectiveUserId();

    /// <summary>getegid(2).</summary>
    public static uint EffectiveGroupId() => LibC.GetEffectiveGroupId();
}

namespace Nestor.Machine.Paging;

/// <summary>The access rights of a translation, combined over every paging-structure entry used (Intel SDM Vol. 3A
/// §4.6.1: a right is granted only if every level grants it), with the leaf's dirty and global bits.</summary>
[Flags]
public enum TranslationRights : byte
{
    None = 0,
    /// <summary>R/W = 1 at every level.</summary>
    Writable = 1 << 0,
    /// <summary>U/S = 1 at every level: a user-mode address.</summary>
    User = 1 << 1,
    /// <summary>XD = 0 at every level (or NX disabled).</summary>
    Executable = 1 << 2,
    /// <summary>The leaf entry's D bit is set.</summary>
    Dirty = 1 << 3,
    /// <summary>The leaf entry's G bit is set and CR4.PGE is on: survives CR3 writes.</summary>
    Global = 1 << 4,
}

/// <summary>Permission checks of Intel SDM Vol. 3A §4.6 ("Access Rights"), shared by the TLB-hit path and the walker
/// so the two cannot disagree.</summary>
public static class AccessRights
{
    /// <summary>Null when <paramref name="rights"/> allow the access, else the page-fault error code for a
    /// protection violation (P = 1).</summary>
    /// <param name="user">A user-mode access (CPL 3 and not an implicit supervisor access).</param>
    /// <param name="alignmentCheck">RFLAGS.AC, which lets supervisor code reach user pages under SMAP.</param>
    public static PageFaultError? Check(TranslationRights rights, AccessKind kind, bool user, bool alignmentCheck,
        in PagingControls controls)
    {
        bool userPage = (rights & TranslationRights.User) != 0;
        bool allowed;
        if (user)
        {
            allowed = userPage && kind switch
            {
                AccessKind.Write => (rights & TranslationRights.Writable) != 0,
                AccessKind.Execute => (rights & TranslationRights.Executable) != 0,
                _ => true,
            };
        }
        else
        {
            allowed = kind switch
            {
                // §4.6.1: supervisor fetches need XD clear; under SMEP they may not fetch from user pages.
                AccessKind.Execute => (rights & TranslationRights.Executable) != 0 &&
                                      !(controls.SupervisorExecutionPrevention && userPage),
                // Supervisor writes to read-only pages are allowed when CR0.WP = 0.
                AccessKind.Write => ((rights & TranslationRights.Writable) != 0 || !controls.WriteProtect) &&
                                    !(controls.SupervisorAccessPrevention && userPage && !alignmentCheck),
                _ => !(controls.SupervisorAccessPrevention && userPage && !alignmentCheck),
            };
        }
        return allowed ? null : ErrorCode(PageFaultError.Present, kind, user, controls);
    }

    /// <summary>The error code for a fault of the given kind (§4.7): W/R, U/S, and I/D when NX or SMEP is enabled.</summary>
    public static PageFaultError ErrorCode(PageFaultError basis, AccessKind kind, bool user, in PagingControls controls)
    {
        var e = basis;
        if (kind == AccessKind.Write)
        {
            e |= PageFaultError.Write;
        }
        if (user)
        {
            e |= PageFaultError.User;
        }
        if (kind == AccessKind.Execute && (controls.NoExecute || controls.SupervisorExecutionPrevention))
        {
            e |= PageFaultError.InstructionFetch;
        }
        return e;
    }
}

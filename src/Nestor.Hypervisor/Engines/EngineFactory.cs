using Nestor.Hypervisor.Configuration;

namespace Nestor.Hypervisor.Engines;

/// <summary>Chooses the engine a configuration asks for, so that library users and the CLI build it the same way.</summary>
public static class EngineFactory
{
    /// <summary>The engine for <paramref name="config"/>: <see cref="SimEngine"/> with <see cref="VmConfig.Sim"/>, or
    /// <see cref="KvmEngine"/>. Dispose of it (the software machine holds its VMM's memory until then).</summary>
    public static IEngine Create(VmConfig config) => config.Engine switch
    {
        EngineKind.Sim => new SimEngine(config.Sim),
        EngineKind.Kvm => new KvmEngine(),
        _ => throw new ArgumentOutOfRangeException(nameof(config), config.Engine, "no such engine"),
    };
}

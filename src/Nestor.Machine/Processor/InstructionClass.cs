namespace Nestor.Machine.Processor;

/// <summary>Coarse instruction classes for the retired-instruction counters and the cost model. Each instruction's
/// class is in its row of <see cref="InstructionTable"/>; a mnemonic without a row (not modelled) counts as
/// <see cref="System"/>.</summary>
public enum InstructionClass : byte
{
    Arithmetic,
    MultiplyDivide,
    DataMovement,
    ControlTransfer,
    String,
    System,
}

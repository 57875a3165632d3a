namespace Nestor.Machine.Processor;

/// <summary>A binary interchange format the x87 loads and stores (IEEE 754 single and double, SDM Vol. 1 §4.2.2).</summary>
/// <param name="FractionBits">Stored fraction bits (23, 52).</param>
/// <param name="ExponentBits">Exponent bits (8, 11).</param>
/// <param name="Bytes">Its size in memory.</param>
public readonly record struct FloatFormat(int FractionBits, int ExponentBits, int Bytes)
{
    /// <summary>The exponent bias.</summary>
    public int Bias => (1 << (ExponentBits - 1)) - 1;

    /// <summary>The all-ones exponent (infinities and NaNs).</summary>
    public int MaximumExponent => (1 << ExponentBits) - 1;
}

/// <summary>Exact conversions between the x87's double extended-precision registers and single/double precision
/// (SDM Vol. 1 §4.2.2, §4.8, §8.5): widening is exact (an SNaN becomes a QNaN with IE, a denormal source sets DE);
/// narrowing rounds by FCW.RC (§4.8.4: nearest-even, down, up, toward zero), with the IEEE flags PE, UE (tiny and
/// inexact), OE (the masked response of §4.9.1.4 by rounding mode) and IE (SNaN, unnormal), and tells whether the
/// magnitude was rounded up (FSW.C1).</summary>
public static class X87Conversion
{
    /// <summary>IEEE single precision.</summary>
    public static readonly FloatFormat Single = new(23, 8, 4);

    /// <summary>IEEE double precision.</summary>
    public static readonly FloatFormat Double = new(52, 11, 8);

    private const ushort Invalid = 1 << 0, Denormal = 1 << 1, Overflow = 1 << 3, Underflow = 1 << 4, Precision = 1 << 5;

    /// <summary>Widens <paramref name="bits"/> of <paramref name="format"/> to the 80-bit format, exactly. Returns
    /// true when no exception flag was raised; otherwise <paramref name="flags"/> holds them (the value is the
    /// masked response: the quieted NaN, or the denormal's exact value).</summary>
    public static bool Widen(ulong bits, FloatFormat format, out X87Register value, out ushort flags)
    {
        flags = 0;
        int f = format.FractionBits;
        ulong fraction = bits & ((1UL << f) - 1);
        int exponent = (int)((bits >> f) & (ulong)format.MaximumExponent);
        ushort sign = (ushort)(((bits >> (f + format.ExponentBits)) & 1) << 15);
        if (exponent == format.MaximumExponent)
        {
            ulong significand = 0x8000_0000_0000_0000UL | (fraction << (63 - f));
            if (fraction != 0 && (significand & 0x4000_0000_0000_0000UL) == 0)
            {
                flags = Invalid;                                     // an SNaN is quieted
                significand |= 0x4000_0000_0000_0000UL;
            }
            value = new X87Register { Significand = significand, SignExponent = (ushort)(sign | 0x7FFF) };
        }
        else if (exponent == 0)
        {
            if (fraction == 0)
            {
                value = new X87Register { SignExponent = sign };
            }
            else
            {
                flags = Denormal;                                    // exact, normalized
                int shift = System.Numerics.BitOperations.LeadingZeroCount(fraction);
                int unbiased = 1 - format.Bias - (shift - (63 - f));
                value = new X87Register { Significand = fraction << shift, SignExponent = (ushort)(sign | (unbiased + 16383)) };
            }
        }
        else
        {
            value = new X87Register
            {
                Significand = 0x8000_0000_0000_0000UL | (fraction << (63 - f)),
                SignExponent = (ushort)(sign | (exponent - format.Bias + 16383)),
            };
        }
        return flags == 0;
    }

    /// <summary>Rounds <paramref name="value"/> to <paramref name="format"/> by <paramref name="roundingControl"/>
    /// (FCW bits 11:10) and returns the bits (<paramref name="trapUnderflow"/>: FCW.UM is clear): the masked response when <paramref name="flags"/> holds exceptions.</summary>
    public static ulong Narrow(X87Register value, FloatFormat format, int roundingControl, bool trapUnderflow, out ushort flags, out bool roundedUp)
    {
        flags = 0;
        roundedUp = false;
        int f = format.FractionBits;
        bool negative = (value.SignExponent & 0x8000) != 0;
        ulong sign = negative ? 1UL << (f + format.ExponentBits) : 0;
        ulong infinity = sign | ((ulong)format.MaximumExponent << f);
        int exponent = value.SignExponent & 0x7FFF;
        ulong m = value.Significand;
        if (exponent == 0x7FFF)
        {
            if ((m << 1) == 0)
            {
                return infinity;
            }
            if ((m & 0x4000_0000_0000_0000UL) == 0)
            {
                flags = Invalid;                                     // SNaN: quieted
            }
            return infinity | ((m << 1) >> (64 - f)) | (1UL << (f - 1));
        }
        if (m == 0)
        {
            return sign;                                             // zero (a pseudo-denormal zero too)
        }
        if (exponent != 0 && (m >> 63) == 0)
        {
            flags = Invalid;                                         // an unnormal: the indefinite
            return (1UL << (f + format.ExponentBits)) | ((ulong)format.MaximumExponent << f) | (1UL << (f - 1));
        }
        int unbiased = (exponent == 0 ? 1 : exponent) - 16383;
        int lz = System.Numerics.BitOperations.LeadingZeroCount(m);
        m <<= lz;
        unbiased -= lz;
        int target = unbiased + format.Bias;                        // the biased exponent if normal
        // Keep f + 1 bits (the integer bit and the fraction) of a normal result; a tiny one keeps fewer.
        int drop = 63 - f + (target >= 1 ? 0 : 1 - target);
        ulong kept, rest;
        bool halfway, above;
        if (drop > 64)
        {
            (kept, rest, halfway, above) = (0, m, false, false);   // below half of the smallest denormal
        }
        else if (drop == 64)
        {
            (kept, rest) = (0, m);
            halfway = m == 0x8000_0000_0000_0000UL;
            above = m > 0x8000_0000_0000_0000UL;
        }
        else
        {
            kept = m >> drop;
            rest = m << (64 - drop);
            halfway = rest == 0x8000_0000_0000_0000UL;
            above = rest > 0x8000_0000_0000_0000UL;
        }
        bool inexact = rest != 0;
        bool increment = roundingControl switch
        {
            0 => above || (halfway && (kept & 1) != 0),               // nearest, ties to even
            1 => inexact && negative,                                 // down, toward −∞
            2 => inexact && !negative,                                // up, toward +∞
            _ => false,                                               // toward zero
        };
        if (increment)
        {
            kept++;
            roundedUp = true;
        }
        if (inexact)
        {
            flags |= Precision;
        }
        if (target >= 1)
        {
            if (kept >> (f + 1) != 0)
            {
                kept >>= 1;
                target++;
            }
            if (target >= format.MaximumExponent)
            {
                // Overflow (masked response, SDM Vol. 1 §4.9.1.4): ∞ or the largest finite number by the rounding mode.
                flags |= Overflow | Precision;
                bool toInfinity = roundingControl == 0 || (roundingControl == 1 && negative) || (roundingControl == 2 && !negative);
                roundedUp = toInfinity;
                return toInfinity ? infinity : sign | (((ulong)format.MaximumExponent - 1) << f) | ((1UL << f) - 1);
            }
            return sign | ((ulong)target << f) | (kept & ((1UL << f) - 1));
        }
        // Tiny: a denormal (or, if rounding carried into bit f, the smallest normal, which the encoding gives as is).
        // Underflow is signalled when tiny and inexact if masked, when tiny at all if unmasked (SDM Vol. 1 §4.9.1.5).
        if (inexact || trapUnderflow)
        {
            flags |= Underflow;
        }
        return sign | kept;
    }
}

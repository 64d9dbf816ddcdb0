package dev.mobilec.core;

/**
 * Affine quantization of a model input or output tensor (LiteRT int8/uint8 I/O):
 * {@code q = clamp(rint(x / scale) + zeroPoint)} and {@code x = (q - zeroPoint) * scale}, in
 * float32, rounding half to even like the host (numpy.rint).
 *
 * <pre>{@code
 * QuantParams q = new QuantParams("int8", 0.0235f, -3);
 * byte[] bytes = q.quantize(x);
 * }</pre>
 */
public final class QuantParams {
  public final String dtype; // int8 | uint8
  public final float scale;
  public final int zeroPoint;

  public QuantParams(String dtype, float scale, int zeroPoint) {
    if (!"int8".equals(dtype) && !"uint8".equals(dtype)) {
      throw new IllegalArgumentException("quantized dtype must be int8 or uint8, got " + dtype);
    }
    if (!(scale > 0) || Float.isInfinite(scale)) throw new IllegalArgumentException("quantization scale must be > 0");
    this.dtype = dtype;
    this.scale = scale;
    this.zeroPoint = zeroPoint;
  }

  private int min() {
    return "int8".equals(dtype) ? -128 : 0;
  }

  private int max() {
    return "int8".equals(dtype) ? 127 : 255;
  }

  /** Quantizes to raw bytes (two's complement for int8, 0..255 stored in a byte for uint8). */
  public byte[] quantize(float[] x) {
    byte[] out = new byte[x.length];
    for (int i = 0; i < x.length; i++) {
      double q = Math.rint(x[i] / scale) + zeroPoint;
      int v = (int) Math.max(min(), Math.min(max(), q));
      out[i] = (byte) v;
    }
    return out;
  }

  /** Dequantizes raw bytes written by the runtime. */
  public float[] dequantize(byte[] q) {
    float[] out = new float[q.length];
    for (int i = 0; i < q.length; i++) {
      int v = "int8".equals(dtype) ? q[i] : (q[i] & 0xff);
      out[i] = (float) (v - zeroPoint) * scale;
    }
    return out;
  }
}

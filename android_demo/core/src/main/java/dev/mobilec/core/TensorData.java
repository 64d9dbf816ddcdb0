package dev.mobilec.core;

import java.util.Arrays;

/**
 * A runtime-neutral tensor: a shape plus float32 or int64 values (row-major).
 *
 * <p>The app converts ExecuTorch / LiteRT tensors to and from this type so that pre- and
 * post-processing live here, testable without a phone.
 *
 * <pre>{@code
 * TensorData x = TensorData.ofFloats(new float[784], new long[] {1, 1, 28, 28});
 * }</pre>
 */
public final class TensorData {
  private final long[] shape;
  private final float[] floats;
  private final long[] longs;

  private TensorData(long[] shape, float[] floats, long[] longs) {
    long n = numel(shape);
    int len = floats != null ? floats.length : longs.length;
    if (n != len) {
      throw new IllegalArgumentException(
          "shape " + Arrays.toString(shape) + " holds " + n + " values but " + len + " were given");
    }
    this.shape = shape.clone();
    this.floats = floats;
    this.longs = longs;
  }

  public static TensorData ofFloats(float[] values, long[] shape) {
    return new TensorData(shape, values, null);
  }

  public static TensorData ofLongs(long[] values, long[] shape) {
    return new TensorData(shape, null, values);
  }

  /** A 1-D float tensor (outputs whose shape the runtime does not report). */
  public static TensorData ofFloats(float[] values) {
    return new TensorData(new long[] {values.length}, values, null);
  }

  /** A 1-D int64 tensor. */
  public static TensorData ofLongs(long[] values) {
    return new TensorData(new long[] {values.length}, null, values);
  }

  public static long numel(long[] shape) {
    long n = 1;
    for (long d : shape) {
      if (d < 0) throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
      n *= d;
    }
    return n;
  }

  public long[] shape() {
    return shape.clone();
  }

  public boolean isFloat() {
    return floats != null;
  }

  /** "float32" or "int64". */
  public String dtype() {
    return floats != null ? "float32" : "int64";
  }

  public int size() {
    return floats != null ? floats.length : longs.length;
  }

  /** The float values; throws for an int64 tensor. */
  public float[] floats() {
    if (floats == null) throw new IllegalStateException("tensor is int64, not float32");
    return floats;
  }

  /** The int64 values; throws for a float32 tensor. */
  public long[] longs() {
    if (longs == null) throw new IllegalStateException("tensor is float32, not int64");
    return longs;
  }

  /** The values as doubles (exact for float32, and for int64 up to 2^53). */
  public double[] asDoubles() {
    double[] out = new double[size()];
    for (int i = 0; i < out.length; i++) out[i] = floats != null ? floats[i] : (double) longs[i];
    return out;
  }

  @Override
  public String toString() {
    return "TensorData(" + dtype() + ", " + Arrays.toString(shape) + ")";
  }
}

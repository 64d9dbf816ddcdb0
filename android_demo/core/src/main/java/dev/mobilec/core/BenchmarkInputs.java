package dev.mobilec.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Benchmark inputs given by the profiler: {@code --es input PATH} names a file of raw
 * little-endian float32 values, one or more samples of the model's input shape, fed in turn
 * (cycled) to the timed runs.
 *
 * <pre>{@code
 * List<TensorData> samples = BenchmarkInputs.fromRawFloat32(bytes, spec);
 * BenchmarkInputs.Cycle next = new BenchmarkInputs.Cycle(samples);
 * }</pre>
 */
public final class BenchmarkInputs {
  private BenchmarkInputs() {}

  /** Splits raw float32 bytes into samples of {@code spec}; integer models get the values as ids. */
  public static List<TensorData> fromRawFloat32(byte[] data, InputSpec spec) {
    long per = TensorData.numel(spec.shape);
    if (data.length == 0 || data.length % 4 != 0) {
      throw new IllegalArgumentException("input file has " + data.length + " bytes: expected raw float32 values");
    }
    long values = data.length / 4;
    if (values % per != 0) {
      throw new IllegalArgumentException(
          "input file holds " + values + " float32 values, not a whole number of samples of " + spec
              + " (" + per + " values each)");
    }
    ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
    int n = (int) (values / per);
    List<TensorData> out = new ArrayList<>(n);
    for (int s = 0; s < n; s++) {
      float[] x = new float[(int) per];
      for (int i = 0; i < per; i++) x[i] = b.getFloat();
      if ("float32".equals(spec.dtype)) {
        out.add(TensorData.ofFloats(x, spec.shape));
      } else {
        long[] ids = new long[x.length];
        for (int i = 0; i < x.length; i++) {
          if (x[i] != Math.rint(x[i])) {
            throw new IllegalArgumentException("input value " + x[i] + " is not an integer id for a " + spec.dtype + " input");
          }
          ids[i] = (long) x[i];
        }
        out.add(TensorData.ofLongs(ids, spec.shape));
      }
    }
    return Collections.unmodifiableList(out);
  }

  /** Hands out the samples in turn, starting over after the last. */
  public static final class Cycle {
    private final List<TensorData> samples;
    private int next = 0;

    public Cycle(List<TensorData> samples) {
      if (samples.isEmpty()) throw new IllegalArgumentException("no input samples");
      this.samples = samples;
    }

    public TensorData next() {
      TensorData t = samples.get(next);
      next = (next + 1) % samples.size();
      return t;
    }

    public int size() {
      return samples.size();
    }
  }
}

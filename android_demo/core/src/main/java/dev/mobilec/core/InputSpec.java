package dev.mobilec.core;

import java.util.Arrays;
import java.util.Random;

/**
 * The shape and dtype of a model's single input, and deterministic benchmark inputs for it.
 *
 * <p>ExecuTorch's Java API does not report input shapes, so the benchmark takes them from (in
 * order) the {@code --es shape 1,1,28,28 [--es dtype float32]} extras, a
 * {@code mobilec_metadata.json} beside the model file, or the bundled metadata when it names the
 * same model file.
 *
 * <pre>{@code
 * InputSpec spec = InputSpec.parse("1,1,28,28", "float32");
 * TensorData x = spec.syntheticInput(0);
 * }</pre>
 */
public final class InputSpec {
  public final long[] shape;
  public final String dtype; // float32 | int64 | int32

  public InputSpec(long[] shape, String dtype) {
    if (shape.length == 0) throw new IllegalArgumentException("input shape is empty");
    for (long d : shape) {
      if (d <= 0) throw new IllegalArgumentException("input shape " + Arrays.toString(shape) + " has a dimension <= 0");
    }
    if (TensorData.numel(shape) > 64L * 1024 * 1024) {
      throw new IllegalArgumentException("input shape " + Arrays.toString(shape) + " is implausibly large");
    }
    if (!dtype.equals("float32") && !dtype.equals("int64") && !dtype.equals("int32")) {
      throw new IllegalArgumentException("input dtype must be float32, int64 or int32, got " + dtype);
    }
    this.shape = shape.clone();
    this.dtype = dtype;
  }

  /** Parses "1,1,28,28" (spaces and brackets tolerated); dtype null means float32. */
  public static InputSpec parse(String shapeText, String dtype) {
    String cleaned = shapeText.replace("[", "").replace("]", "").replace("x", ",").trim();
    if (cleaned.isEmpty()) throw new IllegalArgumentException("empty input shape");
    String[] parts = cleaned.split("\\s*,\\s*");
    long[] shape = new long[parts.length];
    for (int i = 0; i < parts.length; i++) {
      try {
        shape[i] = Long.parseLong(parts[i].trim());
      } catch (NumberFormatException e) {
        throw new IllegalArgumentException("input shape \"" + shapeText + "\" is not a list of integers like 1,1,28,28");
      }
    }
    return new InputSpec(shape, dtype == null ? "float32" : dtype);
  }

  public static InputSpec of(ModelMetadata meta) {
    return new InputSpec(meta.inputShape, meta.inputDtype);
  }

  /**
   * A fixed pseudo-random input (uniform in [-1, 1) for floats, small ids for integers) so
   * repeated benchmarks feed identical data; seed 0 gives the same tensor on every device.
   */
  public TensorData syntheticInput(long seed) {
    int n = (int) TensorData.numel(shape);
    Random rnd = new Random(seed);
    if (dtype.equals("float32")) {
      float[] v = new float[n];
      for (int i = 0; i < n; i++) v[i] = rnd.nextFloat() * 2f - 1f;
      return TensorData.ofFloats(v, shape);
    }
    long[] v = new long[n]; // id 0 is valid for every embedding table
    return TensorData.ofLongs(v, shape);
  }

  @Override
  public String toString() {
    return dtype + Arrays.toString(shape);
  }
}

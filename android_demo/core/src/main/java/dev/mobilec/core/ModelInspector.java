package dev.mobilec.core;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.util.Arrays;

/**
 * Reads a model file's first input (shape, dtype, int8 quantization) straight from its flatbuffer,
 * for the cases the runtimes' Java APIs do not answer: ExecuTorch's Module does not report input
 * shapes, and LiteRT's TensorBuffer does not report quantization.
 *
 * <pre>{@code
 * ModelInspector.Io io = ModelInspector.inspect(new File("/data/.../model.pte"));
 * io.input.shape;   // [1, 1, 28, 28]
 * }</pre>
 *
 * <p>Field numbers follow ExecuTorch's {@code schema/program.fbs} and LiteRT's {@code schema.fbs};
 * flatbuffers only ever append fields, so they hold for newer files too.
 */
public final class ModelInspector {
  private ModelInspector() {}

  /** The first input of the "forward" method / main subgraph, and the first output's quantization. */
  public static final class Io {
    public final InputSpec input;
    public final QuantParams inputQuant; // LiteRT int8/uint8 input, else null
    public final QuantParams outputQuant; // LiteRT int8/uint8 first output, else null
    public final int numInputs;

    Io(InputSpec input, QuantParams inputQuant, QuantParams outputQuant, int numInputs) {
      this.input = input;
      this.inputQuant = inputQuant;
      this.outputQuant = outputQuant;
      this.numInputs = numInputs;
    }
  }

  /** Inspects a .pte or .tflite file (memory-mapped; only the flatbuffer header region is touched). */
  public static Io inspect(File file) throws IOException {
    RuntimeKind kind = RuntimeKind.fromFileName(file.getName());
    try (RandomAccessFile raf = new RandomAccessFile(file, "r");
        FileChannel ch = raf.getChannel()) {
      long size = ch.size();
      if (size < 16) throw new IllegalArgumentException(file.getName() + " is too small to be a model (" + size + " bytes)");
      ByteBuffer buf = ch.map(FileChannel.MapMode.READ_ONLY, 0, Math.min(size, Integer.MAX_VALUE));
      return kind == RuntimeKind.EXECUTORCH ? inspectPte(buf, file.getName()) : inspectTflite(buf, file.getName());
    }
  }

  // ------------------------------------------------------------------ ExecuTorch (.pte)

  // KernelTypes union: NONE=0, Null, Int, Bool, Double, Tensor=5, ...
  private static final int KERNEL_TYPE_TENSOR = 5;

  /** Parses an ExecuTorch program: Program.execution_plan["forward"].inputs → Tensor sizes/scalar_type. */
  public static Io inspectPte(ByteBuffer buf, String name) {
    Flat fb = new Flat(buf, name);
    String ident = fb.ascii(4, 4);
    if (!ident.matches("ET\\d\\d")) {
      throw new IllegalArgumentException(name + " is not an ExecuTorch program (no 'ET..' identifier)");
    }
    int program = fb.root();
    int plans = fb.vectorField(program, 1); // Program.execution_plan
    if (plans < 0) throw new IllegalArgumentException(name + " has no execution plans");
    int plan = -1;
    for (int i = 0; i < fb.length(plans); i++) {
      int p = fb.tableAt(plans, i);
      if ("forward".equals(fb.stringField(p, 0))) plan = p; // ExecutionPlan.name
    }
    if (plan < 0) throw new IllegalArgumentException(name + " has no 'forward' method");
    int values = fb.vectorField(plan, 2); // ExecutionPlan.values
    int inputs = fb.vectorField(plan, 3); // ExecutionPlan.inputs
    if (values < 0 || inputs < 0 || fb.length(inputs) == 0) {
      throw new IllegalArgumentException(name + ": 'forward' takes no inputs");
    }
    int valueIndex = fb.intAt(inputs, 0);
    if (valueIndex < 0 || valueIndex >= fb.length(values)) throw fb.corrupt("input value index out of range");
    int evalue = fb.tableAt(values, valueIndex);
    int type = fb.u8Field(evalue, 0, 0); // EValue.val_type
    if (type != KERNEL_TYPE_TENSOR) {
      throw new IllegalArgumentException(name + ": the first input of 'forward' is not a tensor (union type " + type + ")");
    }
    int tensor = fb.tableField(evalue, 1); // EValue.val
    int scalarType = fb.u8Field(tensor, 0, 0); // Tensor.scalar_type
    int sizes = fb.vectorField(tensor, 2); // Tensor.sizes
    long[] shape = new long[sizes < 0 ? 0 : fb.length(sizes)];
    for (int i = 0; i < shape.length; i++) shape[i] = fb.intAt(sizes, i);
    return new Io(new InputSpec(shape, etDtype(scalarType, name)), null, null, fb.length(inputs));
  }

  private static String etDtype(int scalarType, String name) {
    switch (scalarType) {
      case 6:
        return "float32";
      case 4:
        return "int64";
      case 3:
        return "int32";
      default:
        throw new IllegalArgumentException(name + ": input scalar type " + scalarType + " is not float32/int64/int32");
    }
  }

  // ------------------------------------------------------------------ LiteRT (.tflite)

  /** Parses a TFLite model: subgraphs[0].inputs[0] → Tensor shape/type/quantization. */
  public static Io inspectTflite(ByteBuffer buf, String name) {
    Flat fb = new Flat(buf, name);
    if (!"TFL3".equals(fb.ascii(4, 4))) {
      throw new IllegalArgumentException(name + " is not a TFLite model (no 'TFL3' identifier)");
    }
    int model = fb.root();
    int subgraphs = fb.vectorField(model, 2); // Model.subgraphs
    if (subgraphs < 0 || fb.length(subgraphs) == 0) throw new IllegalArgumentException(name + " has no subgraphs");
    int sg = fb.tableAt(subgraphs, 0);
    int tensors = fb.vectorField(sg, 0); // SubGraph.tensors
    int inputs = fb.vectorField(sg, 1); // SubGraph.inputs
    int outputs = fb.vectorField(sg, 2); // SubGraph.outputs
    if (tensors < 0 || inputs < 0 || fb.length(inputs) == 0) throw new IllegalArgumentException(name + " has no inputs");
    int in = fb.tableAt(tensors, checkIndex(fb, tensors, fb.intAt(inputs, 0)));
    int type = fb.u8Field(in, 1, 0); // Tensor.type
    int shapeVec = fb.vectorField(in, 0); // Tensor.shape
    long[] shape = new long[shapeVec < 0 ? 0 : fb.length(shapeVec)];
    for (int i = 0; i < shape.length; i++) shape[i] = fb.intAt(shapeVec, i);
    QuantParams inQ = tfliteQuant(fb, in, type);
    QuantParams outQ = null;
    if (outputs >= 0 && fb.length(outputs) > 0) {
      int out = fb.tableAt(tensors, checkIndex(fb, tensors, fb.intAt(outputs, 0)));
      outQ = tfliteQuant(fb, out, fb.u8Field(out, 1, 0));
    }
    String dtype;
    if (inQ != null || type == 0) {
      dtype = "float32"; // a quantized input is fed normalized floats, quantized by the app
    } else if (type == 4) {
      dtype = "int64";
    } else if (type == 2) {
      dtype = "int32";
    } else {
      throw new IllegalArgumentException(name + ": input tensor type " + type + " is not float32/int64/int32/int8");
    }
    return new Io(new InputSpec(shape, dtype), inQ, outQ, fb.length(inputs));
  }

  private static int checkIndex(Flat fb, int vector, int index) {
    if (index < 0 || index >= fb.length(vector)) throw fb.corrupt("tensor index " + index + " out of range");
    return index;
  }

  // TensorType: FLOAT32=0, INT32=2, UINT8=3, INT64=4, INT8=9
  private static QuantParams tfliteQuant(Flat fb, int tensor, int type) {
    if (type != 9 && type != 3) return null;
    int q = fb.tableField(tensor, 4); // Tensor.quantization
    if (q < 0) return null;
    int scales = fb.vectorField(q, 2); // QuantizationParameters.scale
    int zeros = fb.vectorField(q, 3); // QuantizationParameters.zero_point (long)
    if (scales < 0 || fb.length(scales) != 1) return null; // per-channel I/O is not used for activations
    float scale = fb.floatAt(scales, 0);
    long zp = zeros >= 0 && fb.length(zeros) > 0 ? fb.longAt(zeros, 0) : 0;
    if (!(scale > 0)) return null;
    return new QuantParams(type == 9 ? "int8" : "uint8", scale, (int) zp);
  }

  // ------------------------------------------------------------------ a bounds-checked flatbuffer reader

  /** Minimal little-endian flatbuffer access: every offset is checked against the buffer. */
  static final class Flat {
    private final ByteBuffer b;
    private final String name;

    Flat(ByteBuffer buf, String name) {
      this.b = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
      this.name = name;
    }

    IllegalArgumentException corrupt(String what) {
      return new IllegalArgumentException(name + " is truncated or corrupted (" + what + ")");
    }

    private int check(long pos, int len) {
      if (pos < 0 || pos + len > b.limit()) throw corrupt("offset " + pos + " past the end (" + b.limit() + " bytes)");
      return (int) pos;
    }

    int u8(long pos) {
      return b.get(check(pos, 1)) & 0xff;
    }

    int u16(long pos) {
      return b.getShort(check(pos, 2)) & 0xffff;
    }

    int i32(long pos) {
      return b.getInt(check(pos, 4));
    }

    long u32(long pos) {
      return b.getInt(check(pos, 4)) & 0xffffffffL;
    }

    String ascii(int pos, int len) {
      check(pos, len);
      char[] c = new char[len];
      for (int i = 0; i < len; i++) c[i] = (char) (b.get(pos + i) & 0xff);
      return new String(c);
    }

    int root() {
      return check(u32(0), 4);
    }

    /** Offset of field {@code slot} inside table {@code t}, or 0 when absent. */
    private int fieldOffset(int t, int slot) {
      long vt = (long) t - i32(t);
      int vtSize = u16(vt);
      int entry = 4 + 2 * slot;
      return entry + 2 <= vtSize ? u16(vt + entry) : 0;
    }

    int u8Field(int t, int slot, int dflt) {
      int off = fieldOffset(t, slot);
      return off == 0 ? dflt : u8((long) t + off);
    }

    /** Position of a sub-table (uoffset field), or -1 when absent. */
    int tableField(int t, int slot) {
      int off = fieldOffset(t, slot);
      if (off == 0) return -1;
      long pos = (long) t + off;
      return check(pos + u32(pos), 4);
    }

    /** Position of a vector's length word, or -1 when absent. */
    int vectorField(int t, int slot) {
      return tableField(t, slot);
    }

    String stringField(int t, int slot) {
      int s = tableField(t, slot);
      if (s < 0) return null;
      long len = u32(s);
      if (len > 4096) throw corrupt("string of " + len + " bytes");
      return ascii(check(s + 4L, (int) len), (int) len);
    }

    int length(int vec) {
      long n = u32(vec);
      if (n > b.limit()) throw corrupt("vector of " + n + " elements");
      return (int) n;
    }

    int tableAt(int vec, int i) {
      if (i < 0 || i >= length(vec)) throw corrupt("vector index " + i + " out of range");
      long e = vec + 4L + 4L * i;
      return check(e + u32(e), 4);
    }

    int intAt(int vec, int i) {
      if (i < 0 || i >= length(vec)) throw corrupt("vector index " + i + " out of range");
      return i32(vec + 4L + 4L * i);
    }

    long longAt(int vec, int i) {
      if (i < 0 || i >= length(vec)) throw corrupt("vector index " + i + " out of range");
      return b.getLong(check(vec + 4L + 8L * i, 8));
    }

    float floatAt(int vec, int i) {
      if (i < 0 || i >= length(vec)) throw corrupt("vector index " + i + " out of range");
      return b.getFloat(check(vec + 4L + 4L * i, 4));
    }

    @Override
    public String toString() {
      return "Flat(" + name + ", " + b.limit() + " bytes, head " + Arrays.toString(new int[] {u8(4), u8(5), u8(6), u8(7)}) + ")";
    }
  }
}

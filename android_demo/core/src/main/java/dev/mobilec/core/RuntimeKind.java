package dev.mobilec.core;

import java.util.Locale;

/**
 * The on-device runtime that executes a model file, chosen by the file's suffix.
 *
 * <pre>{@code
 * RuntimeKind.fromFileName("/data/local/tmp/m.pte");  // EXECUTORCH
 * }</pre>
 */
public enum RuntimeKind {
  EXECUTORCH("executorch", ".pte"),
  TFLITE("tflite", ".tflite");

  /** The name used in metadata and in the benchmark JSON ("executorch" | "tflite"). */
  public final String id;

  /** The model file suffix, with the dot. */
  public final String suffix;

  RuntimeKind(String id, String suffix) {
    this.id = id;
    this.suffix = suffix;
  }

  /** The runtime for a model path; throws with a clear message for any other suffix. */
  public static RuntimeKind fromFileName(String path) {
    String lower = path.toLowerCase(Locale.ROOT);
    for (RuntimeKind k : values()) {
      if (lower.endsWith(k.suffix)) return k;
    }
    throw new IllegalArgumentException(
        "unsupported model file '" + path + "': expected a .pte (ExecuTorch) or .tflite (LiteRT) file");
  }

  /** Parses the metadata / JSON name ("executorch" | "tflite"). */
  public static RuntimeKind fromId(String id) {
    for (RuntimeKind k : values()) {
      if (k.id.equals(id)) return k;
    }
    throw new IllegalArgumentException("unknown runtime '" + id + "': expected \"executorch\" or \"tflite\"");
  }
}

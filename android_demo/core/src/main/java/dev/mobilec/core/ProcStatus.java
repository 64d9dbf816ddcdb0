package dev.mobilec.core;

/**
 * Reads memory figures from the text of {@code /proc/self/status} (Linux, Android).
 *
 * <pre>{@code
 * Long kb = ProcStatus.peakResidentKb(new String(Files.readAllBytes(Paths.get("/proc/self/status"))));
 * }</pre>
 */
public final class ProcStatus {
  private ProcStatus() {}

  /** VmHWM, the peak resident set size of the process in kB, or null when the line is absent. */
  public static Long peakResidentKb(String statusText) {
    return field(statusText, "VmHWM:");
  }

  /** VmRSS, the current resident set size in kB, or null when absent. */
  public static Long residentKb(String statusText) {
    return field(statusText, "VmRSS:");
  }

  static Long field(String text, String key) {
    for (String line : text.split("\n")) {
      if (!line.startsWith(key)) continue;
      String rest = line.substring(key.length()).trim();
      String[] parts = rest.split("\\s+");
      if (parts.length == 0 || parts[0].isEmpty()) return null;
      long value;
      try {
        value = Long.parseLong(parts[0]);
      } catch (NumberFormatException e) {
        return null;
      }
      String unit = parts.length > 1 ? parts[1] : "kB";
      if (unit.equalsIgnoreCase("kB")) return value;
      if (unit.equalsIgnoreCase("mB")) return value * 1024;
      if (unit.equalsIgnoreCase("gB")) return value * 1024 * 1024;
      return null;
    }
    return null;
  }
}

package dev.mobilec.demo

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import dev.mobilec.core.QuantParams
import dev.mobilec.core.RuntimeKind
import dev.mobilec.core.TensorData
import java.io.File
import java.io.FileNotFoundException
import org.pytorch.executorch.DType
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * One loaded model in its on-device runtime. The runtime-specific code of the app is all in this
 * file; everything else goes through [TensorData] and the core module.
 *
 * ```
 * openEngine(File("/data/local/tmp/m.pte"), threads = 1).use { e -> e.run(input, "float32") }
 * ```
 */
interface Engine : AutoCloseable {
    val runtime: RuntimeKind

    /** Runs one inference on [input] (fed as [dtype]: float32, int64 or int32); returns all outputs. */
    fun run(input: TensorData, dtype: String): List<TensorData>

    override fun close()
}

/**
 * Opens [file] with the runtime its suffix names; a missing or unreadable file fails clearly.
 * [inputQuant] / [outputQuant]: int8 I/O quantization of a LiteRT model (from the metadata or
 * [dev.mobilec.core.ModelInspector]); ExecuTorch models take and return floats.
 */
fun openEngine(file: File, threads: Int, inputQuant: QuantParams? = null, outputQuant: QuantParams? = null): Engine {
    val runtime = RuntimeKind.fromFileName(file.name)
    if (!file.isFile) throw FileNotFoundException("model file ${file.path} does not exist")
    if (!file.canRead()) {
        throw FileNotFoundException(
            "model file ${file.path} is not readable by the app (adb push it to /data/local/tmp and chmod 644)",
        )
    }
    return when (runtime) {
        RuntimeKind.EXECUTORCH -> ExecuTorchEngine(file, threads)
        RuntimeKind.TFLITE -> LiteRtEngine(file, threads, inputQuant, outputQuant)
    }
}

/** ExecuTorch (org.pytorch:executorch-android): Module.load + an eagerly loaded "forward". */
class ExecuTorchEngine(file: File, threads: Int) : Engine {
    override val runtime = RuntimeKind.EXECUTORCH

    // LOAD_MODE_FILE reads the whole program up front, so load_ms covers the I/O, as on the host.
    private val module: Module = Module.load(file.absolutePath, Module.LOAD_MODE_FILE, threads)

    init {
        try {
            module.loadMethod("forward") // otherwise the first inference pays for method init
        } catch (t: Throwable) {
            module.destroy()
            throw t
        }
    }

    override fun run(input: TensorData, dtype: String): List<TensorData> {
        val shape = input.shape()
        val tensor = when (dtype) {
            "float32" -> Tensor.fromBlob(input.floats(), shape)
            "int64" -> Tensor.fromBlob(input.longs(), shape)
            "int32" -> Tensor.fromBlob(IntArray(input.size()) { input.longs()[it].toInt() }, shape)
            else -> throw IllegalArgumentException("unsupported input dtype $dtype")
        }
        val outputs = module.forward(EValue.from(tensor))
        return outputs.filter { it.isTensor }.map { toTensorData(it.toTensor()) }
    }

    private fun toTensorData(t: Tensor): TensorData = when (t.dtype()) {
        DType.FLOAT -> TensorData.ofFloats(t.dataAsFloatArray, t.shape())
        DType.INT64 -> TensorData.ofLongs(t.dataAsLongArray, t.shape())
        DType.INT32 -> TensorData.ofLongs(t.dataAsIntArray.map { it.toLong() }.toLongArray(), t.shape())
        else -> throw IllegalStateException("output dtype ${t.dtype()} is not handled by the demo")
    }

    override fun close() = module.destroy()
}

/**
 * LiteRT (com.google.ai.edge.litert): CompiledModel on the CPU (XNNPACK) with [threads] threads.
 * A quantized (int8) input is quantized from the normalized floats, a quantized first output
 * dequantized, with the scale/zero-point the bundler read from the model.
 */
class LiteRtEngine(
    file: File,
    threads: Int,
    private val inputQuant: QuantParams? = null,
    private val outputQuant: QuantParams? = null,
) : Engine {
    override val runtime = RuntimeKind.TFLITE

    private val model: CompiledModel = CompiledModel.create(
        file.absolutePath,
        CompiledModel.Options(Accelerator.CPU).apply {
            cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
        },
    )
    private val inputs: List<TensorBuffer> = closingModelOnFailure { model.createInputBuffers() }
    private val outputs: List<TensorBuffer> = closingModelOnFailure { model.createOutputBuffers() }

    init {
        if (inputs.size != 1) {
            close()
            throw IllegalArgumentException("the demo feeds one input; ${file.name} has ${inputs.size}")
        }
    }

    private fun <T> closingModelOnFailure(block: () -> T): T =
        try {
            block()
        } catch (t: Throwable) {
            model.close()
            throw t
        }

    override fun run(input: TensorData, dtype: String): List<TensorData> {
        when {
            inputQuant != null -> inputs[0].writeInt8(inputQuant.quantize(input.floats()))
            dtype == "float32" -> inputs[0].writeFloat(input.floats())
            dtype == "int64" -> inputs[0].writeLong(input.longs())
            dtype == "int32" -> inputs[0].writeInt(IntArray(input.size()) { input.longs()[it].toInt() })
            else -> throw IllegalArgumentException("unsupported input dtype $dtype")
        }
        model.run(inputs, outputs)
        return outputs.mapIndexed { i, buffer ->
            if (i == 0 && outputQuant != null) TensorData.ofFloats(outputQuant.dequantize(buffer.readInt8()))
            else readOutput(buffer)
        }
    }

    /** LiteRT buffers do not report their element type here: float first, then the integer reads. */
    private fun readOutput(buffer: TensorBuffer): TensorData =
        runCatching { TensorData.ofFloats(buffer.readFloat()) }
            .recoverCatching { TensorData.ofLongs(buffer.readLong()) }
            .recoverCatching { TensorData.ofLongs(buffer.readInt().map { it.toLong() }.toLongArray()) }
            .getOrThrow()

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}

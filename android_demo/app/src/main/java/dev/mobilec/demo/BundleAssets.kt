package dev.mobilec.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import dev.mobilec.core.ModelMetadata
import dev.mobilec.core.Preprocessing
import dev.mobilec.core.TensorData
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException

/**
 * What `mobilec android bundle` put into the APK's assets: `mobilec_metadata.json`, the model
 * file and the sample image; and where a model path given to the app points.
 */
object BundleAssets {

    /** The bundled metadata, or null when nothing was bundled (a malformed file throws). */
    fun readMetadata(context: Context): ModelMetadata? {
        val text = try {
            context.assets.open(ModelMetadata.ASSET_NAME).use { it.readBytes().toString(Charsets.UTF_8) }
        } catch (e: FileNotFoundException) {
            return null
        }
        return ModelMetadata.parse(text)
    }

    /**
     * The bundled model as a file: runtimes load from a path, so the asset is copied once into
     * `files/models/` (again when its size changed after a re-bundle).
     */
    fun bundledModelFile(context: Context, meta: ModelMetadata): File {
        val dir = File(context.filesDir, "models").apply { mkdirs() }
        val target = File(dir, meta.modelFile)
        if (target.isFile && (meta.modelBytes < 0 || target.length() == meta.modelBytes)) return target
        val tmp = File(dir, "${meta.modelFile}.part")
        try {
            context.assets.open(meta.modelFile).use { input -> tmp.outputStream().use { input.copyTo(it) } }
        } catch (e: FileNotFoundException) {
            throw FileNotFoundException(
                "asset ${meta.modelFile} named by ${ModelMetadata.ASSET_NAME} is not in the APK; re-run the bundler",
            )
        }
        if (meta.modelBytes >= 0 && tmp.length() != meta.modelBytes) {
            tmp.delete()
            throw IOException("asset ${meta.modelFile} has ${tmp.length()} bytes, metadata says ${meta.modelBytes}")
        }
        if (!tmp.renameTo(target)) throw IOException("cannot move $tmp to $target")
        return target
    }

    /**
     * Resolves a model path given on the command line: absolute paths as they are (e.g. pushed to
     * /data/local/tmp), relative ones inside the app's files dir, or else the bundled asset of
     * that name.
     */
    fun resolveModel(context: Context, path: String, meta: ModelMetadata?): File {
        val file = File(path)
        if (file.isAbsolute) return file
        val inFiles = File(context.filesDir, path)
        if (inFiles.isFile) return inFiles
        if (meta != null && meta.modelFile == path) return bundledModelFile(context, meta)
        throw FileNotFoundException(
            "model '$path' is neither an absolute path, nor in ${context.filesDir}, nor the bundled asset",
        )
    }

    /** Metadata and where its sample lives: [dir] is the folder of a pushed bundle, null for the APK's assets. */
    class Described(val meta: ModelMetadata, val dir: File?)

    /**
     * Metadata that describes [model]: a `mobilec_metadata.json` beside it (a pushed bundle), else
     * the bundled one when it names the same file; null when none does.
     */
    fun metadataFor(model: File, bundled: ModelMetadata?): Described? {
        val sidecar = File(model.parentFile, ModelMetadata.ASSET_NAME)
        if (sidecar.isFile) {
            val meta = ModelMetadata.parse(sidecar.readText())
            if (meta.modelFile == model.name) return Described(meta, model.parentFile)
        }
        return bundled?.takeIf { it.modelFile == model.name }?.let { Described(it, null) }
    }

    /** The sample image decoded without density scaling, resized to the model's H×W if needed. */
    fun sampleBitmap(context: Context, described: Described): Bitmap {
        val meta = described.meta
        val name = meta.sampleImage ?: throw IllegalStateException("this bundle has no sample image")
        val opts = BitmapFactory.Options().apply {
            inScaled = false
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        val stream = if (described.dir != null) File(described.dir, name).inputStream() else context.assets.open(name)
        val decoded = stream.use { BitmapFactory.decodeStream(it, null, opts) }
            ?: throw IOException("cannot decode sample image $name")
        return if (decoded.width == meta.width() && decoded.height == meta.height()) {
            decoded
        } else {
            Bitmap.createScaledBitmap(decoded, meta.width(), meta.height(), true)
        }
    }

    /** The model input for a bitmap of the model's size, preprocessed by the core module. */
    fun imageInput(bitmap: Bitmap, meta: ModelMetadata): TensorData {
        val w = bitmap.width
        val h = bitmap.height
        val argb = IntArray(w * h)
        bitmap.getPixels(argb, 0, w, 0, 0, w, h)
        return TensorData.ofFloats(Preprocessing.argbToNchw(argb, w, h, meta), meta.inputShape)
    }
}

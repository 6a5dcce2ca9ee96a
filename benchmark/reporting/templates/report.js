// Records each image's decoded size on the page (data-natural-width/-height), so a test can check
// in a real browser that the embedded PNGs decode.
window.addEventListener('load', function () {
  var images = document.querySelectorAll('img');
  var decoded = 0;
  images.forEach(function (img) {
    img.setAttribute('data-natural-width', img.naturalWidth);
    img.setAttribute('data-natural-height', img.naturalHeight);
    if (img.naturalWidth > 0) { decoded += 1; }
  });
  document.body.setAttribute('data-images-decoded', decoded + '/' + images.length);
});

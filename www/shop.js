// The demo shop's own code, shared by its pages. It is also the
// integration guide: every line that talks to weft is marked "weft:", and
// it uses only weft's public API (window.weft, see /weft.d.ts); the shop
// keeps its own state (cart, whether it asked for consent) under its own
// "shop." keys, never reading weft's storage.
"use strict";

var shop = (function () {
  var products = [
    { sku: "linen-shirt", name: "Linen shirt", price: 45, category: "Shirts", blurb: "Breathable, stone-washed linen." },
    { sku: "wool-scarf", name: "Wool scarf", price: 29, category: "Accessories", blurb: "Merino, warm without the itch." },
    { sku: "trail-shoes", name: "Trail shoes", price: 119, category: "Shoes", blurb: "Grip for wet rock and roots." },
    { sku: "canvas-tote", name: "Canvas tote", price: 19, category: "Accessories", blurb: "Carries a week of groceries." }
  ];

  function product(sku) {
    return products.filter(function (p) { return p.sku === sku; })[0];
  }

  // ---- the cart: the shop's own state -------------------------------------
  function cart() {
    try { return JSON.parse(localStorage.getItem("shop.cart") || "[]"); } catch (e) { return []; }
  }
  function saveCart(items) { localStorage.setItem("shop.cart", JSON.stringify(items)); }
  function addToCart(sku) {
    var p = product(sku);
    var items = cart();
    items.push(sku);
    saveCart(items);
    // weft: an ecommerce event with the Segment spec's property names.
    weft.track("Product Added", { product_id: p.sku, name: p.name, price: p.price, category: p.category, quantity: 1, currency: "EUR" });
    renderHeader();
  }
  function cartTotal(items) {
    return items.reduce(function (sum, sku) { return sum + product(sku).price; }, 0);
  }

  // ---- the header: navigation, cart, who is logged in ---------------------
  function renderHeader() {
    var header = document.getElementById("shop-header");
    if (!header) return;
    var user = localStorage.getItem("shop.user");
    var n = cart().length;
    header.querySelector("[data-cart]").textContent = "Cart (" + n + ")";
    header.querySelector("[data-user]").textContent = user ? "Hi, " + user : "Log in";
  }

  // ---- consent: a banner with categories -----------------------------------
  // The page's script tag says data-consent="opt-in": until the visitor
  // decides, weft stores nothing and sends nothing.
  function showBanner() {
    var banner = document.getElementById("consent");
    // weft: consent.get() answers the preferences in force once loaded.
    var current = (weft.consent.get && weft.consent.get()) || {};
    ["analytics", "marketing", "personalization"].forEach(function (c) {
      banner.querySelector("[name=" + c + "]").checked = current[c] === true;
    });
    banner.hidden = false;
  }
  function decided() {
    localStorage.setItem("shop.consent-asked", "1");
    document.getElementById("consent").hidden = true;
  }
  function wireBanner() {
    var banner = document.getElementById("consent");
    if (!banner) return;
    banner.querySelector("[data-accept-all]").addEventListener("click", function () {
      weft.consent.grantAll(); // weft: every category granted
      decided();
    });
    banner.querySelector("[data-reject-all]").addEventListener("click", function () {
      weft.consent.denyAll(); // weft: only "necessary"
      decided();
    });
    banner.querySelector("[data-save]").addEventListener("click", function () {
      var choice = {};
      ["analytics", "marketing", "personalization"].forEach(function (c) {
        choice[c] = banner.querySelector("[name=" + c + "]").checked;
      });
      weft.consent.set(choice); // weft: the categories as chosen
      decided();
    });
    document.querySelectorAll("[data-privacy]").forEach(function (a) {
      a.addEventListener("click", function (e) { e.preventDefault(); weft.ready(showBanner); });
    });
    if (!localStorage.getItem("shop.consent-asked")) banner.hidden = false;
  }

  // ---- logging in and out ---------------------------------------------------
  function logIn(userId, email) {
    localStorage.setItem("shop.user", userId);
    // weft: this browser is now this user; its anonymous history joins
    // their profile (the identity graph shows the edge this call makes).
    weft.identify(userId, { email: email, plan: "member" });
    renderHeader();
  }
  function logOut() {
    localStorage.removeItem("shop.user");
    // weft: forget the user on this device (a new anonymous ID from here on).
    weft.reset();
    renderHeader();
  }

  // The header and the consent banner, the same on every page.
  var HEADER =
    '<a class="logo" href="/">Fern &amp; Field</a>' +
    '<nav><a href="/">Home</a><a href="/app.html">Checkout</a>' +
    '<a href="/account.html" data-user>Log in</a><a href="/app.html" data-cart>Cart</a>' +
    '<a href="/dashboard" class="muted">weft dashboard</a></nav>';
  var BANNER =
    '<p><strong>Your privacy.</strong> This shop measures visits with weft, on its own server. ' +
    'Nothing is stored in your browser or sent until you choose.</p>' +
    '<label><input type="checkbox" name="analytics"> Analytics: page views and clicks</label>' +
    '<label><input type="checkbox" name="marketing"> Marketing: ad platforms may learn of orders</label>' +
    '<label><input type="checkbox" name="personalization"> Personalization: recommendations</label>' +
    '<div class="actions"><button type="button" id="consent-accept" data-accept-all>Accept all</button>' +
    '<button type="button" data-reject-all class="secondary">Reject all</button>' +
    '<button type="button" data-save class="secondary">Save choices</button></div>';

  function layout() {
    var header = document.createElement("header");
    header.id = "shop-header";
    header.innerHTML = HEADER;
    document.body.insertBefore(header, document.body.firstChild);
    var banner = document.createElement("div");
    banner.id = "consent";
    banner.hidden = true;
    banner.setAttribute("role", "dialog");
    banner.setAttribute("aria-label", "Privacy choices");
    banner.innerHTML = BANNER;
    document.body.appendChild(banner);
    var footer = document.createElement("footer");
    footer.innerHTML = 'A demo of <a href="https://github.com/">weft</a>: one script tag, consent first. ' +
      '<a href="#" data-privacy>Privacy settings</a>';
    document.body.appendChild(footer);
  }

  function init() {
    layout();
    renderHeader();
    wireBanner();
  }

  return { products: products, product: product, cart: cart, saveCart: saveCart, addToCart: addToCart,
    cartTotal: cartTotal, logIn: logIn, logOut: logOut, init: init };
})();

document.addEventListener("DOMContentLoaded", shop.init);

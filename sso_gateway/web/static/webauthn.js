/* WebAuthn ceremonies for the gateway's pages: the one place the gateway uses JavaScript.
 *
 * A button with data-webauthn="register" or "authenticate" carries the options the server generated
 * (JSON, in data-options). On a click it asks the browser for a credential, writes the result (JSON,
 * base64url fields) into the form's hidden "credential" field and submits the form: the server checks
 * it. No fetch, no inline script: the page's Content-Security-Policy allows only this file.
 */
(function () {
  "use strict";

  function toBuffer(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, { id: toBuffer(c.id) }); });
  }

  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBuffer(json.challenge);
    options.user = Object.assign({}, json.user, { id: toBuffer(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBuffer(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  function credentialJSON(credential) {
    var response = credential.response;
    var json = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: toBase64url(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      json.response.attestationObject = toBase64url(response.attestationObject);
      json.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      json.response.authenticatorData = toBase64url(response.authenticatorData);
      json.response.signature = toBase64url(response.signature);
      if (response.userHandle) { json.response.userHandle = toBase64url(response.userHandle); }
    }
    return json;
  }

  function ceremony(button) {
    var form = button.form;
    var error = document.getElementById(button.getAttribute("data-error"));
    var json = JSON.parse(button.getAttribute("data-options"));
    var register = button.getAttribute("data-webauthn") === "register";
    if (error) { error.hidden = true; }
    button.disabled = true;
    var asked = register
      ? navigator.credentials.create({ publicKey: creationOptions(json) })
      : navigator.credentials.get({ publicKey: requestOptions(json) });
    asked.then(function (credential) {
      form.elements.credential.value = JSON.stringify(credentialJSON(credential));
      form.submit();
    }).catch(function () {
      button.disabled = false;
      if (error) { error.hidden = false; }
    });
  }

  if (!window.PublicKeyCredential) { return; }
  var buttons = document.querySelectorAll("button[data-webauthn]");
  for (var i = 0; i < buttons.length; i++) {
    var button = buttons[i];
    button.hidden = false;
    button.addEventListener("click", function (event) {
      event.preventDefault();
      ceremony(event.currentTarget);
    });
  }
})();
